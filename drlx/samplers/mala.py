"""Metropolis-adjusted Langevin (MALA): the ULA proposal plus an accept/reject test per example,
so that the chain leaves the target exactly invariant (Roberts and Tweedie 1996).

The noise scale is 1 by construction: a tempered proposal (noise_scale < 1) would still be
corrected towards the untempered target, so the knob has no meaning here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example, sum_squares
from drlx.keys import fold_each, per_example_normal
from drlx.samplers.base import AbstractSampler, Target


def mala_step(
    target: Target,
    y: Float[Array, " N *D"],
    value: Float[Array, " N"],
    grad: Float[Array, " N *D"],
    step_sq: Float[Array, " N"],
    noise: Float[Array, " N *D"],
    log_uniform: Float[Array, " N"],
) -> tuple[Array, Array, Array, Array]:
    """One MALA step for every example (the randomness is passed in, so it is the caller's).

    With h = s^2 the proposal is y' = y + (h/2) grad log p(y) + s eps, accepted when
        log u < log p(y') - log p(y) + log q(y | y') - log q(y' | y),
    q(a | b) = N(a; b + (h/2) grad log p(b), h I). Written with eps, the q terms are
        log q(y | y') - log q(y' | y) = (||eps||^2 - ||eps + (s/2)(grad(y) + grad(y'))||^2) / 2,
    which avoids the cancellation in y - y' when h is small.

    Arguments:
        target: returns (log p, grad log p) of each example at y.
        y: current states.
        value, grad: target(y), carried over from the previous step.
        step_sq: h = s^2 of each example.
        noise: eps, standard normal, shaped like y.
        log_uniform: log u, u ~ U(0, 1), one per example.

    Returns:
        (new y, its log p, its grad log p, accepted as float 0/1 per example). A proposal with a
        non-finite log p is rejected.
    """
    s = jnp.sqrt(broadcast_to_example(step_sq, y))
    proposal = y + 0.5 * s**2 * grad + s * noise
    value_p, grad_p = target(proposal)
    back = noise + 0.5 * s * (grad + grad_p)
    log_alpha = value_p - value + 0.5 * (sum_squares(noise) - sum_squares(back))
    accept = log_uniform < log_alpha  # False for NaN
    keep = broadcast_to_example(accept, y)
    return (
        jnp.where(keep, proposal, y),
        jnp.where(accept, value_p, value),
        jnp.where(keep, grad_p, grad),
        accept.astype(y.dtype),
    )


def per_example_log_uniform(keys: PRNGKeyArray, tag: int | Array) -> Array:
    """log u, u ~ U(0, 1) per example, from fold_in(fold_in(keys[i], tag), 1).

    Step k's proposal noise uses fold_in(keys[i], k) as ULA's does, so a MALA chain that accepts
    every proposal is the ULA chain with the same keys.
    """
    draw = lambda k: jnp.log(jax.random.uniform(jax.random.fold_in(k, 1)))  # noqa: E731
    return jax.vmap(draw)(fold_each(keys, tag))


class MALA(AbstractSampler):
    """num_steps MALA steps per chain, step s^2 per example; exact for any step size."""

    num_steps: int = eqx.field(static=True)

    def __check_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"MALA: num_steps must be >= 1, got {self.num_steps}")

    def run(
        self,
        target: Target,
        y0: Float[Array, " N *D"],
        step_sq: Float[Array, " N"],
        keys: PRNGKeyArray,
    ) -> tuple[Float[Array, " N *D"], Float[Array, " N"]]:
        """Run the chains from y0 and report how often each accepted.

        Arguments:
            target: returns (log p, grad log p) of each example at y.
            y0: starting points.
            step_sq: s^2 for each example.
            keys: one key per example.

        Returns:
            The chains' states after num_steps steps and each chain's acceptance rate.
        """
        value0, grad0 = target(y0)

        def step(carry, k):
            y, value, grad, accepted = carry
            eps = per_example_normal(keys, k, y)
            log_u = per_example_log_uniform(keys, k)
            y, value, grad, a = mala_step(target, y, value, grad, step_sq, eps, log_u)
            return (y, value, grad, accepted + a), None

        init = (y0, value0, grad0, jnp.zeros(y0.shape[:1], y0.dtype))
        (y, _, _, accepted), _ = jax.lax.scan(step, init, jnp.arange(self.num_steps))
        return y, accepted / self.num_steps

    def __call__(
        self,
        target: Target,
        y0: Float[Array, " N *D"],
        step_sq: Float[Array, " N"],
        keys: PRNGKeyArray,
    ) -> Float[Array, " N *D"]:
        """The chains' states after num_steps steps (see `run`, which also reports acceptance)."""
        return self.run(target, y0, step_sq, keys)[0]
