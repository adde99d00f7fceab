"""Guided log-densities: weighted sums of one conditional network's log-densities under several
conditions (docs/method.md §12).

A `Guide` holds, per example, J conditions c_j and one weight vector w summing to 1; the chains'
target becomes
    log p(y | x~) = sum_j w_j f(y | c_j, x~)   (the tether counted once, as sum_j w_j = 1)
and the initializer's mean sum_j w_j mu(x~, c_j). Three cases:
- plain conditioning: J = 1, w = (1);
- classifier-free guidance of strength w: (c, null) with weights (1 + w, -w);
- a product of experts over conditions c_i with weights w_i (negative: negation):
  (c_1, ..., c_k, null) with weights (w_1, ..., w_k, 1 - sum_i w_i).
"""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


class Guide(eqx.Module):
    """Conditions (N, J, M) of N examples and their weights (J,), which sum to 1."""

    conditions: Int[Array, " N J M"]
    weights: Float[Array, " J"]


def _check_weights(weights: np.ndarray) -> None:
    if not np.isclose(weights.sum(), 1.0, atol=1e-6):
        raise ValueError(f"guide weights must sum to 1, got {weights.tolist()}")


def plain(c: Int[Array, " N M"]) -> Guide:
    """Plain conditioning on c (one term, weight 1)."""
    c = jnp.asarray(c, jnp.int32)
    return Guide(c[:, None, :], jnp.ones((1,), jnp.float32))


def classifier_free(c: Int[Array, " N M"], null: Int[Array, " M"], w: float) -> Guide:
    """(1 + w) f(y | c) - w f(y | null): classifier-free guidance of strength w (w = 0: plain
    conditioning)."""
    c = jnp.asarray(c, jnp.int32)
    nulls = jnp.broadcast_to(jnp.asarray(null, jnp.int32), c.shape)
    return Guide(jnp.stack([c, nulls], axis=1), jnp.asarray([1.0 + w, -w], jnp.float32))


def compose(
    conditions: Sequence[Int[Array, " M"]], weights: Sequence[float], null: Int[Array, " M"], n: int
) -> Guide:
    """sum_i w_i f(y | c_i) - (sum_i w_i - 1) f(y | null), the same for all n examples: a
    product of experts over the conditions c_i (a negative w_i negates its condition)."""
    terms = np.stack([*(np.asarray(c, np.int32) for c in conditions), np.asarray(null, np.int32)])
    w = np.asarray([*weights, 1.0 - float(np.sum(weights))], np.float32)
    _check_weights(w)
    stacked = jnp.broadcast_to(jnp.asarray(terms), (n, *terms.shape))
    return Guide(stacked, jnp.asarray(w))


def requested_classes(num: int, num_classes: int) -> np.ndarray:
    """Class i mod num_classes for sample i: every class equally often."""
    return np.arange(num) % num_classes
