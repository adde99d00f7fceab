"""Generation: from white noise down the levels, one Langevin chain per level."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.energy import ConditionalEBM
from drlx.guidance import Guide
from drlx.keys import fold_each
from drlx.samplers.base import AbstractSampler


def recover(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    x_next: Float[Array, " N *D"],
    t: Array,
    keys: PRNGKeyArray,
    guide: Guide | None = None,
) -> Float[Array, " N *D"]:
    """Sample x_t ~ p(x_t | x_{t+1}): run the chain on y from its start (x~, or CDRL's
    proposal), return x_t = y / a_{t+1}.

    Arguments:
        ebm: the conditional EBMs.
        sampler: the Langevin sampler.
        x_next: x_{t+1}, the tether.
        t: per-example levels (N,).
        keys: per-example keys.
        guide: conditions and weights of a guided target (None: the model as it is).
    """
    y0 = ebm.start(x_next, t, keys, guide=guide)
    y = sampler(ebm.target(x_next, t, guide), y0, ebm.step_sq[t], keys)
    return y / broadcast_to_example(ebm.schedule.a_out[t + 1], y)


def tweedie(
    ebm: ConditionalEBM, x0: Float[Array, " N *D"], guide: Guide | None = None
) -> Float[Array, " N *D"]:
    """Tweedie's denoising step after level 0 (docs/method.md §11): E[x | x_0] = (x_0 +
    sigmabar_0^2 grad log p_0(x_0)) / abar_0, with log p_0(x) = f(a_1 x, 0) the level-0 EBM's
    own marginal log-density (so grad_x = a_1 grad_y f), guided like the chains."""
    s = ebm.schedule
    t = jnp.zeros(x0.shape[0], jnp.int32)

    def log_p(x):
        return jnp.sum(ebm.marginal_log_prob(s.a_out[1] * x, t, guide))

    return (x0 + s.sigmabar[0] ** 2 * jax.grad(log_p)(x0)) / s.abar[0]


def generate(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    x_top: Float[Array, " N *D"],
    keys: PRNGKeyArray,
    denoise: bool = False,
    guide: Guide | None = None,
) -> tuple[Float[Array, " N *D"], Float[Array, " T N *D"]]:
    """Walk from x_T down to x_0 (docs/method.md §4.5).

    Arguments:
        ebm: the conditional EBMs of all T levels.
        sampler: the Langevin sampler.
        x_top: x_T, usually standard normal.
        keys: one key per sample.
        denoise: end with Tweedie's step (`tweedie`; the stack keeps the chain's x_0).
        guide: conditions and weights of a guided target at every level (docs/method.md §12).

    Returns:
        x_0 and the stack of x_t for t = T-1 .. 0 (in that order).
    """
    n = x_top.shape[0]

    def one_level(x, level):
        t = jnp.full((n,), level, jnp.int32)
        x = recover(ebm, sampler, x, t, fold_each(keys, level), guide)
        return x, x

    levels = jnp.arange(ebm.schedule.num_levels - 1, -1, -1)
    x0, trajectory = jax.lax.scan(one_level, x_top, levels)
    return (tweedie(ebm, x0, guide) if denoise else x0), trajectory
