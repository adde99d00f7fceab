"""Generation: from white noise down the levels, one Langevin chain per level."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.energy import ConditionalEBM
from drlx.keys import fold_each
from drlx.samplers.base import AbstractSampler


def recover(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    x_next: Float[Array, " N *D"],
    t: Array,
    keys: PRNGKeyArray,
) -> Float[Array, " N *D"]:
    """Sample x_t ~ p(x_t | x_{t+1}): run the chain on y from y = x~, return x_t = y / a_{t+1}.

    Arguments:
        ebm: the conditional EBMs.
        sampler: the Langevin sampler.
        x_next: x_{t+1}, the tether.
        t: per-example levels (N,).
        keys: per-example keys.
    """
    y = sampler(ebm.target(x_next, t), x_next, ebm.step_sq[t], keys)
    return y / broadcast_to_example(ebm.schedule.a_out[t + 1], y)


def generate(
    ebm: ConditionalEBM, sampler: AbstractSampler, x_top: Float[Array, " N *D"], keys: PRNGKeyArray
) -> tuple[Float[Array, " N *D"], Float[Array, " T N *D"]]:
    """Walk from x_T down to x_0 (docs/method.md §4.5).

    Arguments:
        ebm: the conditional EBMs of all T levels.
        sampler: the Langevin sampler.
        x_top: x_T, usually standard normal.
        keys: one key per sample.

    Returns:
        x_0 and the stack of x_t for t = T-1 .. 0 (in that order).
    """
    n = x_top.shape[0]

    def one_level(x, level):
        t = jnp.full((n,), level, jnp.int32)
        x = recover(ebm, sampler, x, t, fold_each(keys, level))
        return x, x

    levels = jnp.arange(ebm.schedule.num_levels - 1, -1, -1)
    x0, trajectory = jax.lax.scan(one_level, x_top, levels)
    return x0, trajectory
