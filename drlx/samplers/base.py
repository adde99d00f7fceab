"""The sampler interface every engine accepts (training, progressive generation, long runs)."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

Target = Callable[[Array], tuple[Array, Array]]
"""A sampler's target: y -> (log p(y) per example, grad_y log p(y))."""


def target_from_log_prob(log_prob: Callable[[Array], Array]) -> Target:
    """A sampler target y -> (log p, grad_y log p) from a per-example log-density.

    Examples are independent, so the gradient of the batch sum is the per-example gradient.
    """

    def total(y):
        values = log_prob(y)
        return jnp.sum(values), values

    def value_and_grad(y):
        grad, values = jax.grad(total, has_aux=True)(y)
        return values, grad

    return value_and_grad


class AbstractSampler(eqx.Module):
    """A Markov chain of `num_steps` steps towards a target, started at y0, with per-example step
    size s^2; example i's result depends only on keys[i] (not on the batch it is in)."""

    num_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        target: Target,
        y0: Float[Array, " N *D"],
        step_sq: Float[Array, " N"],
        keys: PRNGKeyArray,
    ) -> Float[Array, " N *D"]:
        """The chains' states after num_steps steps from y0."""
