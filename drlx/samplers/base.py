"""The sampler interface every engine accepts (training, progressive generation, long runs)."""

import abc
from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

Target = Callable[[Array], tuple[Array, Array]]
"""A sampler's target: y -> (log p(y) per example, grad_y log p(y))."""


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
