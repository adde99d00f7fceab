"""The recovery-likelihood objective (docs/method.md §5.1).

Its gradient in theta is sum_i w_{t_i} (grad g(y-_i, t_i) - grad g(y+_i, t_i)) / N, the
maximum-likelihood gradient of each conditional EBM with y- standing in for its samples; no
gradient flows through the chain that produced y-.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from drlx.models.base import AbstractEnergyNetwork


def recovery_likelihood_terms(
    network: AbstractEnergyNetwork,
    y_pos: Float[Array, " N *D"],
    y_neg: Float[Array, " N *D"],
    t: Int[Array, " N"],
    weights: Float[Array, " T"],
    c: Int[Array, " N M"] | None = None,
) -> Float[Array, " N"]:
    """Per-example terms w_t (g(y-, t) - g(y+, t)), with y- held fixed (stop-gradient).

    Arguments:
        network: g_theta(y, t).
        y_pos: positives a_{t+1} x_t.
        y_neg: negatives from the Langevin chain started at x_{t+1}.
        t: level of each example.
        weights: w_t for each level.
        c: conditions of the examples (a conditional network; None: unconditional).
    """
    y_neg = jax.lax.stop_gradient(y_neg)
    if c is None:
        return weights[t] * (network(y_neg, t) - network(y_pos, t))
    return weights[t] * (network(y_neg, t, c) - network(y_pos, t, c))


def recovery_likelihood_loss(
    network: AbstractEnergyNetwork,
    y_pos: Float[Array, " N *D"],
    y_neg: Float[Array, " N *D"],
    t: Int[Array, " N"],
    weights: Float[Array, " T"],
    c: Int[Array, " N M"] | None = None,
) -> Float[Array, ""]:
    """Mean of `recovery_likelihood_terms` over the batch."""
    return jnp.mean(recovery_likelihood_terms(network, y_pos, y_neg, t, weights, c))
