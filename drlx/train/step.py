"""One training step of diffusion recovery likelihood: draw pairs, run the chains, update."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.diffusion import q_sample_pair
from drlx.energy import ConditionalEBM
from drlx.keys import example_keys, fold_each
from drlx.objective import recovery_likelihood_loss
from drlx.samplers.base import AbstractSampler


class TrainState(eqx.Module):
    """Everything that changes during training. `ema` is what gets reported."""

    network: eqx.Module
    ema: eqx.Module
    opt_state: optax.OptState
    step: Array


def init_state(network: eqx.Module, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: EMA starts at the initial weights.

    Weakly typed arrays (from Python scalars) are made strong first: the step returns strong
    types, and a change of type between calls means a recompilation (seconds per step).
    """
    network = jax.tree.map(
        lambda a: a.astype(a.dtype) if eqx.is_array(a) and a.weak_type else a, network
    )
    params = eqx.filter(network, eqx.is_inexact_array)
    return TrainState(network, network, optimizer.init(params), jnp.zeros((), jnp.int32))


def ema_update(ema: eqx.Module, network: eqx.Module, decay: float) -> eqx.Module:
    """ema <- decay * ema + (1 - decay) * network, on the floating-point leaves."""
    e_params, static = eqx.partition(ema, eqx.is_inexact_array)
    n_params = eqx.filter(network, eqx.is_inexact_array)
    mixed = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, e_params, n_params)
    return eqx.combine(mixed, static)


def negatives(
    ebm: ConditionalEBM, sampler: AbstractSampler, x_next: Array, t: Array, keys: PRNGKeyArray
) -> Array:
    """y- : K Langevin steps on y started at the tether x~ = x_{t+1}."""
    return sampler(ebm.target(x_next, t), x_next, ebm.step_sq[t], keys)


def make_train_step(
    make_ebm: Callable[[eqx.Module], ConditionalEBM],
    sampler: AbstractSampler,
    optimizer: optax.GradientTransformation,
    weights: Float[Array, " T"],
    shared_noise: bool,
    ema_decay: float,
) -> Callable[[TrainState, Array, PRNGKeyArray], tuple[TrainState, dict]]:
    """Build the jitted step (docs/method.md §5.3): t ~ U{0..T-1} per example, positives
    y+ = a_{t+1} x_t, negatives from the chain, Adam on the weighted loss, EMA of the weights.

    Arguments:
        make_ebm: network -> the conditional EBMs built on it (schedule, step sizes, scale).
        sampler: the training Langevin sampler.
        optimizer: the Optax optimizer.
        weights: loss weight of each level.
        shared_noise: draw x_t and x_{t+1} with the same noise (CDRL).
        ema_decay: decay of the EMA of the weights.
    """

    @eqx.filter_jit
    def train_step(state: TrainState, x0: Array, key: PRNGKeyArray) -> tuple[TrainState, dict]:
        n = x0.shape[0]
        # one power iteration of every spectral norm per step; the chain and the loss then use
        # fixed normalized weights, and the advanced vectors are carried in the new state
        network = state.network.power_iteration()
        ebm = make_ebm(network)
        schedule = ebm.schedule
        keys = example_keys(key, n)  # example i: level, noise and chain from fold_in(key, i)
        draw_level = lambda k: jax.random.randint(k, (), 0, schedule.num_levels)  # noqa: E731
        t = jax.vmap(draw_level)(fold_each(keys, 0))
        x_t, x_next = q_sample_pair(schedule, x0, t, fold_each(keys, 1), shared_noise)
        y_pos = broadcast_to_example(schedule.a_out[t + 1], x_t) * x_t
        y_neg = negatives(ebm, sampler, x_next, t, fold_each(keys, 2))
        loss, grads = eqx.filter_value_and_grad(recovery_likelihood_loss)(
            network, y_pos, y_neg, t, weights
        )
        params = eqx.filter(network, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        network = eqx.apply_updates(network, updates)
        new_state = TrainState(
            network, ema_update(state.ema, network, ema_decay), opt_state, state.step + 1
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            # a diverging chain shows here long before the loss stops being finite
            "chain_max_abs": jnp.max(jnp.abs(y_neg)),
        }
        return new_state, metrics

    return train_step
