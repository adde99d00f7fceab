"""Unadjusted Langevin dynamics (docs/method.md §4.2), as a jitted lax.scan."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.keys import per_example_normal
from drlx.samplers.base import AbstractSampler, Target


class ULA(AbstractSampler):
    """y <- y + (s^2 / 2) grad log p(y) + s * noise_scale * eps, for num_steps steps."""

    num_steps: int = eqx.field(static=True)
    noise_scale: float

    def __call__(
        self,
        target: Target,
        y0: Float[Array, " N *D"],
        step_sq: Float[Array, " N"],
        keys: PRNGKeyArray,
    ) -> Float[Array, " N *D"]:
        """Run the chain from y0.

        Arguments:
            target: returns (log p, grad log p) of each example at y.
            y0: starting points.
            step_sq: s^2 for each example.
            keys: one key per example.

        Returns:
            The chain's state after num_steps steps.
        """
        s2 = broadcast_to_example(step_sq, y0)

        def step(y, k):
            _, grad = target(y)
            eps = per_example_normal(keys, k, y)
            return y + 0.5 * s2 * grad + jnp.sqrt(s2) * self.noise_scale * eps, None

        y, _ = jax.lax.scan(step, y0, jnp.arange(self.num_steps))
        return y
