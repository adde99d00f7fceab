"""The recovery-likelihood objective and one training step (docs/method.md §5)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_mlp

from drlx.builder import build_optimizer, loss_weights
from drlx.diffusion import drl_linear_schedule, q_sample_pair
from drlx.energy import ConditionalEBM
from drlx.keys import example_keys, fold_each
from drlx.objective import recovery_likelihood_loss, recovery_likelihood_terms
from drlx.samplers.ula import ULA
from drlx.spec.train import Train
from drlx.train.loop import (
    CHAIN_DIVERGED_ABS,
    ENERGY_GAP_DIVERGED,
    NonFiniteLossError,
    check_record,
    train_loop,
)
from drlx.train.step import dequantize, init_state, make_train_step, negatives

N = 12


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


@pytest.fixture(scope="module", params=[0, 4], ids=["plain", "fourier"])
def network(request):
    return random_mlp(jax.random.key(5), width=16, depth=2, fourier_features=request.param)


@pytest.fixture(scope="module")
def batch(schedule):
    k1, k2, k3 = jax.random.split(jax.random.key(9), 3)
    y_pos = jax.random.normal(k1, (N, 2))
    y_neg = y_pos + 0.3 * jax.random.normal(k2, (N, 2))
    t = jax.random.randint(k3, (N,), 0, schedule.num_levels)
    # Non-uniform weights (sigma_1 / sigma_{t+1} ranges over 0.33 .. 1) so indexing matters.
    return y_pos, y_neg, t, loss_weights("drl", schedule, schedule.step_size_sq(4e-3))


def params_of(tree):
    return eqx.filter(tree, eqx.is_inexact_array)


def leaves(tree):
    return jax.tree.leaves(params_of(tree))


@eqx.filter_jit
def g_single(net, y, t):
    """g(y, t) of one example, as a scalar."""
    return net(y[None], t[None])[0]


def test_terms_and_loss_values(network, batch):
    y_pos, y_neg, t, w = batch
    expected = np.array(
        [
            float(w[t[i]])
            * (float(g_single(network, y_neg[i], t[i])) - float(g_single(network, y_pos[i], t[i])))
            for i in range(N)
        ]
    )
    terms = recovery_likelihood_terms(network, y_pos, y_neg, t, w)
    # float32 network evaluations of O(1) values: 1e-5 absolute/relative.
    np.testing.assert_allclose(np.asarray(terms), expected, rtol=1e-5, atol=1e-5)
    loss = recovery_likelihood_loss(network, y_pos, y_neg, t, w)
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-5, abs=1e-6)


def test_gradient_is_weighted_difference_of_per_example_gradients(network, batch):
    y_pos, y_neg, t, w = batch
    grads = eqx.filter_grad(recovery_likelihood_loss)(network, y_pos, y_neg, t, w)

    # Per-example gradients of g on single examples (vmapped over the examples), then the
    # weighted sum in float64.
    grad_g = eqx.filter_grad(g_single)
    per_neg = eqx.filter_vmap(grad_g, in_axes=(None, 0, 0))(network, y_neg, t)
    per_pos = eqx.filter_vmap(grad_g, in_axes=(None, 0, 0))(network, y_pos, t)
    wt = np.asarray(w, np.float64)[np.asarray(t)]
    expected = jax.tree.map(
        lambda a, b: np.einsum("n,n...->...", wt, np.asarray(a, np.float64) - np.asarray(b)) / N,
        params_of(per_neg),
        params_of(per_pos),
    )

    got_leaves = jax.tree.leaves(params_of(grads))
    exp_leaves = jax.tree.leaves(params_of(expected))
    assert len(got_leaves) == len(exp_leaves) > 0
    nonzero = 0
    for got, exp in zip(got_leaves, exp_leaves, strict=True):
        got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
        scale = np.linalg.norm(exp)
        nonzero += scale > 0
        # Sums of N float32 terms: 1e-5 relative to the leaf's norm.
        assert np.linalg.norm(got - exp) <= 1e-5 * max(scale, 1e-12), (scale, got, exp)
    assert nonzero >= len(exp_leaves) - 1  # at most the frozen Fourier matrix has no gradient


def test_no_gradient_into_negatives(network, batch):
    y_pos, y_neg, t, w = batch
    loss = lambda yp, yn: recovery_likelihood_loss(network, yp, yn, t, w)  # noqa: E731
    g_neg = jax.grad(loss, argnums=1)(y_pos, y_neg)
    np.testing.assert_array_equal(np.asarray(g_neg), 0.0)
    # The positives do get a gradient, -w_t grad_y g(y+, t) / N: the check above is not vacuous.
    g_pos = np.asarray(jax.grad(loss, argnums=0)(y_pos, y_neg))
    grad_y = jax.jit(jax.grad(lambda y, ti: g_single(network, y, ti)))
    expected = np.stack(
        [-float(w[t[i]]) * np.asarray(grad_y(y_pos[i], t[i])) / N for i in range(N)]
    )
    np.testing.assert_allclose(g_pos, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(g_pos).max() > 0


# ---- one training step ------------------------------------------------------------------------
LR = 1e-3


def _toy_train_step(schedule, dequantize_width=None):
    optimizer = optax.adam(LR)  # constant rate (drlx's warm-up starts at 0: no first update)
    step_sq = schedule.step_size_sq(4e-3)

    def make_ebm(network, initializer=None):
        return ConditionalEBM(network=network, schedule=schedule, step_sq=step_sq, g_scale=step_sq)

    step = make_train_step(
        make_ebm,
        ULA(5, 1.0),
        optimizer,
        loss_weights("drl", schedule, schedule.step_size_sq(4e-3)),
        shared_noise=False,
        ema_decay=0.9,
        dequantize_width=dequantize_width,
    )
    return step, optimizer


@pytest.fixture(scope="module")
def step_setup(schedule):
    step, optimizer = _toy_train_step(schedule)
    net = random_mlp(jax.random.key(3), width=16, depth=2)
    x0 = jax.random.normal(jax.random.key(4), (32, 2)) * 0.5
    return step, init_state(net, optimizer), x0


def test_dequantize_is_uniform_of_its_width_and_follows_each_examples_key():
    w, n = 0.125, 4000
    x0 = jnp.zeros((n, 8))
    keys = example_keys(jax.random.key(0), n)
    z = np.asarray(dequantize(x0, w, keys))
    assert z.min() >= -w / 2 and z.max() < w / 2
    # U(-w/2, w/2): mean 0, variance w^2 / 12 (sample variance's relative se sqrt(0.8 / N))
    assert abs(z.mean()) < 5 * w / np.sqrt(12 * z.size)
    np.testing.assert_allclose(z.var(), w**2 / 12, rtol=0.03)
    assert np.corrcoef(z[:, 0], z[:, 1])[0, 1] < 0.1  # entries independent
    perm = np.random.default_rng(0).permutation(n)  # example i's draw depends on its key only
    np.testing.assert_array_equal(np.asarray(dequantize(x0[perm], w, keys[perm])), z[perm])


@pytest.mark.slow
def test_train_step_dequantizes_the_batch_with_the_examples_keys(schedule, step_setup):
    """A step with dequantize_width w on x0 is the plain step on x0 + w (u - 1/2), u drawn from
    fold_in(example key, 4): computed here independently of the step."""
    plain, state, x0 = step_setup
    step, _ = _toy_train_step(schedule, dequantize_width=0.3)
    key = jax.random.key(5)
    u = np.stack(
        [
            np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, i), 4), (2,)))
            for i in range(x0.shape[0])
        ]
    )
    got, m = step(state, x0, key)
    want, m_want = plain(state, x0 + 0.3 * (u - 0.5), key)
    for a, b in zip(leaves(got), leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(m["loss"]), float(m_want["loss"]), rtol=1e-5)
    _, m_plain = plain(state, x0, key)
    assert float(m_plain["loss"]) != float(m["loss"])


@pytest.mark.slow
def test_train_step_reports_the_energy_gap_of_its_own_chains(schedule, step_setup):
    """energy_gap_per_dim = max_i (f(y+_i) - f(y-_i)) / D, f = g / k_t: recomputed here from the
    step's own draws (same keys) through ConditionalEBM.marginal_log_prob, a different path from
    the loss terms w_t (g- - g+) that the step divides by w_t k_t ('drl' weights: w_t != 1 / k_t,
    so a missing factor shows)."""
    step, state, x0 = step_setup
    key = jax.random.key(7)
    _, m = step(state, x0, key)
    step_sq = schedule.step_size_sq(4e-3)
    net = state.network.power_iteration()
    ebm = ConditionalEBM(network=net, schedule=schedule, step_sq=step_sq, g_scale=step_sq)
    keys = example_keys(key, x0.shape[0])
    draw = lambda k: jax.random.randint(k, (), 0, schedule.num_levels)  # noqa: E731
    t = jax.vmap(draw)(fold_each(keys, 0))
    x_t, x_next = q_sample_pair(schedule, x0, t, fold_each(keys, 1), False)
    y_pos = schedule.a_out[t + 1][:, None] * x_t
    y_neg = negatives(ebm, ULA(5, 1.0), x_next, t, fold_each(keys, 2), None, None)
    gap = ebm.marginal_log_prob(y_pos, t) - ebm.marginal_log_prob(y_neg, t)
    np.testing.assert_allclose(m["energy_gap_per_dim"], float(jnp.max(gap)) / 2, rtol=1e-4)


def test_energy_runaway_is_refused_with_its_step_and_size():
    """A record whose energy gap exceeds the limit raises (the chains may look fine: MALA's stay
    put when it rejects); at the limit it passes."""
    ok = {"step": 50, "loss": -1.0, "grad_norm": 1.0, "chain_max_abs": 2.0}
    check_record({**ok, "energy_gap_per_dim": ENERGY_GAP_DIVERGED})
    with pytest.raises(NonFiniteLossError, match=r"energy ran away at step 50: .* 3e\+07 nats"):
        check_record({**ok, "energy_gap_per_dim": 3e7})
    with pytest.raises(NonFiniteLossError, match="energy ran away"):
        check_record({**ok, "energy_gap_per_dim": float("nan")})


@pytest.mark.slow
def test_history_keeps_its_fields(step_setup):
    """The energy gap is checked at every logged step but not written to the history, whose
    records keep the fields the committed train_loss.json files have."""
    step, state, x0 = step_setup
    batches = iter([x0] * 2)
    _, history = train_loop(state, step, batches, jax.random.key(0), 2, 1, progress=False)
    assert [r["step"] for r in history] == [1, 2]
    for record in history:
        assert set(record) == {"step", "loss", "grad_norm", "chain_max_abs", "chain_max_level"}


@pytest.mark.slow
def test_train_step_updates_and_is_deterministic(step_setup):
    step, state, x0 = step_setup
    key = jax.random.key(123)
    new, metrics = step(state, x0, key)
    again, metrics2 = step(state, x0, key)
    other, _ = step(state, x0, jax.random.key(124))

    old_l = [np.asarray(v) for v in jax.tree.leaves(params_of(state.network))]
    new_l = [np.asarray(v) for v in jax.tree.leaves(params_of(new.network))]
    for a, b in zip(old_l, new_l, strict=True):
        delta = np.abs(b - a)
        assert np.any(delta > 0), "every parameter array must move"
        # Adam's first step is -lr g / (|g| + eps): no element moves more than lr.
        assert delta.max() <= LR * (1 + 1e-3)
    all_delta = np.concatenate([np.abs(b - a).ravel() for a, b in zip(old_l, new_l, strict=True)])
    assert np.median(all_delta) > 0.5 * LR  # most elements have |g| >> eps, so they move ~lr

    # Same key, same result, bit for bit; another key, another result.
    for a, b in zip(leaves(new), leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(metrics["loss"]) == float(metrics2["loss"])
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(leaves(new), leaves(other), strict=True)
    )

    # Metrics and bookkeeping: EMA = d * old + (1 - d) * new with d = 0.9, step counter + 1.
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert 0 < float(metrics["chain_max_abs"]) < CHAIN_DIVERGED_ABS  # a healthy start
    assert int(new.step) == int(state.step) + 1
    for e, o, n in zip(leaves(new.ema), old_l, new_l, strict=True):
        np.testing.assert_allclose(np.asarray(e), 0.9 * o + 0.1 * n, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule_closed_form(schedule):
    """Adam's update for a gradient of constant sign is lr(step) in size (m / sqrt(v) = 1 after
    bias correction), so the updates read off the schedule: linear warm-up, then constant or
    lr/2 (1 + cos(pi (s - w) / (N - w))), reaching 0 at step N."""
    spec = Train(num_steps=40, learning_rate=1e-2, warmup_steps=8, lr_schedule=schedule)
    optimizer = build_optimizer(spec)
    params = jnp.zeros(3)
    state = optimizer.init(params)
    sizes = []
    for _ in range(spec.num_steps + 1):
        updates, state = optimizer.update(jnp.ones(3), state, params)
        sizes.append(float(jnp.abs(updates[0])))
    s = np.arange(spec.num_steps + 1)
    w, n, peak = spec.warmup_steps, spec.num_steps, spec.learning_rate
    after = peak * np.ones_like(s, float)
    if schedule == "cosine":
        after = 0.5 * peak * (1 + np.cos(np.pi * np.clip((s - w) / (n - w), 0, 1)))
    expected = np.where(s < w, peak * s / w, after)
    np.testing.assert_allclose(sizes, expected, rtol=1e-4, atol=1e-9)
