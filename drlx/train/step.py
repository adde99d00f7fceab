"""One training step of diffusion recovery likelihood: draw pairs, run the chains, update."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.cooperative import initializer_loss
from drlx.diffusion import q_sample_pair
from drlx.energy import ConditionalEBM
from drlx.guidance import Guide, plain
from drlx.keys import example_keys, fold_each, named_key, per_example_uniform
from drlx.objective import recovery_likelihood_terms
from drlx.samplers.base import AbstractSampler


class TrainState(eqx.Module):
    """Everything that changes during training: each model with its EMA (what gets reported)
    and its optimizer state. The initializer's three fields are None for DRL."""

    network: eqx.Module
    ema: eqx.Module
    opt_state: optax.OptState
    step: Array
    initializer: eqx.Module | None = None
    initializer_ema: eqx.Module | None = None
    initializer_opt_state: optax.OptState | None = None


def _strong(model: eqx.Module) -> eqx.Module:
    """Weakly typed arrays (from Python scalars) made strong: the step returns strong types,
    and a change of type between calls means a recompilation (seconds per step)."""
    strong = lambda a: a.astype(a.dtype) if eqx.is_array(a) and a.weak_type else a  # noqa: E731
    return jax.tree.map(strong, model)


def init_state(
    network: eqx.Module,
    optimizer: optax.GradientTransformation,
    initializer: eqx.Module | None = None,
    initializer_optimizer: optax.GradientTransformation | None = None,
) -> TrainState:
    """A fresh state: the EMAs start at the initial weights."""
    network = _strong(network)
    opt_state = optimizer.init(eqx.filter(network, eqx.is_inexact_array))
    state = TrainState(network, network, opt_state, jnp.zeros((), jnp.int32))
    if initializer is None:
        return state
    initializer = _strong(initializer)
    init_opt = initializer_optimizer.init(eqx.filter(initializer, eqx.is_inexact_array))
    return eqx.tree_at(
        lambda s: (s.initializer, s.initializer_ema, s.initializer_opt_state),
        state,
        (initializer, initializer, init_opt),
        is_leaf=lambda x: x is None,
    )


def _update(model, grads, optimizer, opt_state):
    """One optimizer update of a model's floating-point leaves."""
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state


def ema_update(ema: eqx.Module, network: eqx.Module, decay: float) -> eqx.Module:
    """ema <- decay * ema + (1 - decay) * network, on the floating-point leaves."""
    e_params, static = eqx.partition(ema, eqx.is_inexact_array)
    n_params = eqx.filter(network, eqx.is_inexact_array)
    mixed = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, e_params, n_params)
    return eqx.combine(mixed, static)


def negatives(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    x_next: Array,
    t: Array,
    keys: PRNGKeyArray,
    dropout_key: PRNGKeyArray | None = None,
    guide: Guide | None = None,
) -> Array:
    """y- : K Langevin steps on y, started at the tether x~ = x_{t+1} (DRL) or at a draw of
    the initializer's proposal (CDRL); no gradient flows through the chain's start."""
    y0 = jax.lax.stop_gradient(ebm.start(x_next, t, keys, dropout_key, guide))
    return sampler(ebm.target(x_next, t, guide), y0, ebm.step_sq[t], keys)


def drop_conditions(c: Array, null: Array, p_uncond: float, keys: PRNGKeyArray) -> Array:
    """Each entry of each example's condition replaced by its null token with probability
    p_uncond, independently (example i draws from its own key)."""
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, p_uncond, (c.shape[1],)))(keys)
    return jnp.where(drop, jnp.asarray(null, c.dtype)[None, :], c)


def dequantize(x0: Array, width: float, keys: PRNGKeyArray, tag: int = 4) -> Array:
    """x0 + width (u - 1/2), u ~ U[0, 1) per entry; example i's draw uses fold_in(keys[i], tag)
    (tag 4: the step's other draws use 0-3)."""
    return x0 + width * (per_example_uniform(keys, tag, x0) - 0.5)


def _loss_and_terms(network, y_pos, y_neg, t, weights, c):
    """The recovery-likelihood loss, with its per-example terms as auxiliary output."""
    terms = recovery_likelihood_terms(network, y_pos, y_neg, t, weights, c)
    return jnp.mean(terms), jax.lax.stop_gradient(terms)


def make_train_step(
    make_ebm: Callable[..., ConditionalEBM],
    sampler: AbstractSampler,
    optimizer: optax.GradientTransformation,
    weights: Float[Array, " T"],
    shared_noise: bool,
    ema_decay: float,
    initializer_optimizer: optax.GradientTransformation | None = None,
    initializer_ema_decay: float | None = None,
    proposal_std: Float[Array, " T"] | None = None,
    null: Array | None = None,
    p_uncond: float = 0.0,
    dequantize_width: float | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Build the jitted step (docs/method.md §5.3, §11): t ~ U{0..T-1} per example, positives
    y+ = a_{t+1} x_t, negatives from the chain, Adam on the weighted loss, EMA of the weights.
    With an initializer in the state (CDRL) the chains start at its proposal, and after the
    energy network's update it is updated on the same chains (`initializer_loss`).

    Arguments:
        make_ebm: (network, initializer or None) -> the conditional EBMs built on them.
        sampler: the training Langevin sampler.
        optimizer: the energy network's Optax optimizer.
        weights: loss weight of each level.
        shared_noise: draw x_t and x_{t+1} with the same noise (CDRL).
        ema_decay: decay of the EMA of the energy network.
        initializer_optimizer, initializer_ema_decay, proposal_std: the initializer's
            optimizer, EMA decay and per-level proposal spread v_t (CDRL only).
        null, p_uncond: a conditional model's null condition (M,) and the probability that
            each entry of a training example's condition is replaced by its null token.
        dequantize_width: train on x0 + w (u - 1/2), u uniform per entry, fresh every step
            (`dequantize`; None: on x0 as given).

    The step is (state, x0, key) for unconditional models, (state, x0, key, c) with the
    examples' conditions c (N, M) for conditional ones (docs/method.md §12).
    """

    @eqx.filter_jit
    def train_step(
        state: TrainState, x0: Array, key: PRNGKeyArray, c: Array | None = None
    ) -> tuple[TrainState, dict]:
        n = x0.shape[0]
        # one power iteration of every spectral norm per step; the chain and the loss then use
        # fixed normalized weights, and the advanced vectors are carried in the new state
        network = state.network.power_iteration()
        ebm = make_ebm(network, state.initializer)
        schedule = ebm.schedule
        keys = example_keys(key, n)  # example i: level, noise and chain from fold_in(key, i)
        if dequantize_width is not None:
            x0 = dequantize(x0, dequantize_width, keys)
        draw_level = lambda k: jax.random.randint(k, (), 0, schedule.num_levels)  # noqa: E731
        t = jax.vmap(draw_level)(fold_each(keys, 0))
        x_t, x_next = q_sample_pair(schedule, x0, t, fold_each(keys, 1), shared_noise)
        y_pos = broadcast_to_example(schedule.a_out[t + 1], x_t) * x_t
        chain_keys = fold_each(keys, 2)
        dropout_key = None if state.initializer is None else named_key(key, "dropout")
        guide = None
        if c is not None:
            c = drop_conditions(c, null, p_uncond, fold_each(keys, 3))
            guide = plain(c)
        y_neg = negatives(ebm, sampler, x_next, t, chain_keys, dropout_key, guide)
        (loss, terms), grads = eqx.filter_value_and_grad(_loss_and_terms, has_aux=True)(
            network, y_pos, y_neg, t, weights, c
        )
        network, opt_state = _update(network, grads, optimizer, state.opt_state)
        new_state = TrainState(
            network, ema_update(state.ema, network, ema_decay), opt_state, state.step + 1
        )
        # a diverging chain shows here long before the loss stops being finite
        chain_abs = jnp.max(jnp.abs(y_neg).reshape(n, -1), axis=1)
        # f(y+) - f(y-) = -term / (w_t k_t): how much likelier (nats) the model finds each
        # positive than its chain's negative, energy part only (the tether's part is bounded by
        # the chain's excursion, checked above); per dimension, its batch maximum
        gap = -terms / (weights[t] * ebm.g_scale[t])
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "chain_max_abs": jnp.max(chain_abs),
            "chain_max_level": t[jnp.argmax(chain_abs)],
            "energy_gap_per_dim": jnp.max(gap) / y_pos[0].size,
        }
        if state.initializer is None:
            return new_state, metrics
        init_loss, init_grads = eqx.filter_value_and_grad(initializer_loss)(
            state.initializer, proposal_std, x_next, t, chain_keys, y_neg, dropout_key, guide
        )
        initializer, init_opt_state = _update(
            state.initializer, init_grads, initializer_optimizer, state.initializer_opt_state
        )
        new_state = eqx.tree_at(
            lambda s: (s.initializer, s.initializer_ema, s.initializer_opt_state),
            new_state,
            (
                initializer,
                ema_update(state.initializer_ema, initializer, initializer_ema_decay),
                init_opt_state,
            ),
            is_leaf=lambda x: x is None,
        )
        metrics["initializer_loss"] = init_loss
        metrics["initializer_grad_norm"] = optax.tree.norm(init_grads)
        return new_state, metrics

    return train_step
