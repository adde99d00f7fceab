"""Long-run chains (drlx.density.longrun) on Gaussian conditionals with closed-form answers.

With a quadratic network g / k_t = -||y - m_t||^2 / (2 v_t), p(y | x~) is Gaussian with precision
P = 1/v + tau/sigma^2 and mean mu = (m/v + tau x~/sigma^2) / P; completing the square,
    log p(y | x~) = -(P/2) ||y - mu||^2 + C,
    C = -||mu - m||^2 / (2v) - tau ||mu - x~||^2 / (2 sigma^2).
ULA with step h and noise scale n is linear: y_k - mu = c^k (y_0 - mu) + noise, c = 1 - h P / 2,
with stationary variance V_s = n^2 h / (1 - c^2), so at stationarity in D dimensions
    E log p = -(P/2) D V_s + C,   sd(log p) = (P/2) V_s sqrt(2 D).
Monte Carlo tolerances are Z = 5 standard errors; keys are fixed, so each check is deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FULL_SPEC, AbstractFixedNetwork, replace_once, write
from jaxtyping import Array

from drlx.builder import build
from drlx.density.longrun import (
    drift_verdict,
    long_run,
    record_steps,
    run_long_chains,
)
from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.evaluate.plots import long_run_figure
from drlx.keys import example_keys
from drlx.samplers.many import sample_many
from drlx.samplers.ula import ULA
from drlx.spec import load_spec

Z = 5.0


class LevelQuadratic(AbstractFixedNetwork):
    """g(y, t) = -k_t ||y - m_t||^2 / (2 v_t): level t's log-density is N(m_t, v_t I)."""

    mean: Array  # (T, D)
    var: Array  # (T,)
    scale: Array  # (T,) the EBM's g_scale

    def embed(self, t):
        return self.scale[t], self.mean[t], self.var[t]

    def energy(self, y, context):
        k, m, v = context
        return -k * jnp.sum((y - m) ** 2, axis=-1) / (2.0 * v)


def f64(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def gaussian_conditional(schedule, mean, var, level, x_tilde):
    """(P, mu, C) of p(y | x~) at `level` for the quadratic network (closed form, float64)."""
    tau = f64(schedule.tethered)[level + 1]
    sig2 = f64(schedule.sigma)[level + 1] ** 2
    prec = 1.0 / var + tau / sig2
    mu = (mean / var + tau * x_tilde / sig2) / prec
    const = -np.sum((mu - mean) ** 2) / (2 * var) - tau * np.sum((mu - x_tilde) ** 2) / (2 * sig2)
    return prec, mu, const


def run_long(exp, ebm, key, heldout, heldout_b):
    """The density stage's long run of an experiment (its sampler, settings and shape)."""
    return long_run(ebm, exp.eval_sampler, exp.long_run, exp.shape, key, heldout, heldout_b)


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


def level_ebm(schedule, means, variances, step_sq) -> ConditionalEBM:
    scale = jnp.ones(schedule.num_levels, jnp.float32)
    net = LevelQuadratic(
        jnp.asarray(means, jnp.float32), jnp.asarray(variances, jnp.float32), scale
    )
    return ConditionalEBM(net, schedule, jnp.asarray(step_sq, jnp.float32), scale)


def test_record_steps():
    """The trace grid: start, start + thin, ..., end."""
    np.testing.assert_array_equal(record_steps(30, 530, 100), [30, 130, 230, 330, 430, 530])
    np.testing.assert_array_equal(record_steps(0, 30, 10), [0, 10, 20, 30])
    with pytest.raises(ValueError, match="positive multiple"):
        record_steps(30, 500, 100)
    with pytest.raises(ValueError, match="positive multiple"):
        record_steps(600, 500, 100)


def test_thinned_trace_is_the_chain_at_those_steps(schedule):
    """Without noise ULA is deterministic: y_n = mu + c^n (y_0 - mu). Every record of the
    thinned trace (mean, min, max of x_t = y / a_{t+1}, log p) and every returned state must be
    that closed form at exactly its step count, for two groups (levels) run together."""
    levels, n, start, thin, end = (0, 5), 8, 30, 50, 380
    means = np.zeros((6, 3))
    means[0], means[5] = [0.5, -0.2, 0.1], [-0.3, 0.4, 0.0]
    variances = np.full(6, 0.3)
    step_sq = np.full(6, 2e-3)
    ebm = level_ebm(schedule, means, variances, step_sq)
    x_tilde = np.array([0.2, 0.1, -0.4])
    y0 = np.linspace(-1.0, 1.0, 2 * n * 3).reshape(2 * n, 3)
    t = np.repeat(levels, n)
    tether = np.tile(x_tilde, (2 * n, 1))
    args = (jnp.asarray(tether, jnp.float32), jnp.asarray(y0, jnp.float32), jnp.asarray(t))
    keys = example_keys(jax.random.key(0), 2 * n)
    states, trace = run_long_chains(
        ebm, ULA(7, 0.0), *args, keys, start, [start, 130, end], thin, groups=2
    )
    steps = record_steps(start, end, thin)
    np.testing.assert_array_equal(trace["step"], steps)
    assert trace["log_prob"].shape == (len(steps), 2, n)
    for name in ("mean", "std", "min", "max"):
        assert trace[name].shape == (len(steps), 2, 3)
    a_out = f64(schedule.a_out)
    for g, level in enumerate(levels):
        prec, mu, const = gaussian_conditional(schedule, means[level], 0.3, level, x_tilde)
        c = 1.0 - step_sq[level] * prec / 2
        rows = slice(g * n, (g + 1) * n)
        for r, step in enumerate(steps):
            y = mu + c ** (step - start) * (y0[rows] - mu)
            x = y / a_out[level + 1]
            np.testing.assert_allclose(trace["mean"][r, g], x.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(trace["min"][r, g], x.min(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(trace["max"][r, g], x.max(0), rtol=1e-4, atol=1e-5)
            log_p = -(prec / 2) * np.sum((y - mu) ** 2, axis=1) + const
            np.testing.assert_allclose(trace["log_prob"][r, g], log_p, rtol=1e-4, atol=1e-4)
        for state, step in zip(states, [start, 130, end], strict=True):
            y = mu + c ** (step - start) * (y0[rows] - mu)
            np.testing.assert_allclose(state[rows], y, rtol=1e-4, atol=1e-5)


def test_long_chain_reaches_ula_stationary_law(schedule):
    """With noise, the long chain's statistics converge to ULA's stationary mean mu and std
    sqrt(V_s) (not the target's sqrt(1/P): ULA's O(h) bias is visible), and the energy trace
    to E log p = -(P/2) D V_s + C, at a tethered level and at the untethered top level."""
    levels, n, dim, noise = (1, 5), 4000, 2, 0.99
    means = np.zeros((6, dim))
    means[1], means[5] = [0.4, -0.3], [-0.5, 0.2]
    variances = np.array([0.3, 0.2, 0.3, 0.3, 0.3, 0.5])
    step_sq = np.array([1e-3, 0.12, 1e-3, 1e-3, 1e-3, 0.6])
    ebm = level_ebm(schedule, means, variances, step_sq)
    x_tilde = np.array([-0.6, 0.8])
    t = np.repeat(levels, n)
    tether = jnp.asarray(np.tile(x_tilde, (2 * n, 1)), jnp.float32)
    keys = example_keys(jax.random.key(1), 2 * n)
    _, trace = run_long_chains(
        ebm, ULA(1, noise), tether, tether, jnp.asarray(t), keys, 0, [600], 100, groups=2
    )
    for g, level in enumerate(levels):
        prec, mu, const = gaussian_conditional(
            schedule, means[level], variances[level], level, x_tilde
        )
        h = step_sq[level]
        c = 1.0 - h * prec / 2
        assert c**600 < 1e-6  # the start is forgotten
        v_s = noise**2 * h / (1 - c**2)
        target_var = 1.0 / prec
        # ULA's bias is resolvable: its std differs from the target's by more than 2 tolerances
        assert abs(np.sqrt(v_s) - np.sqrt(target_var)) > 2 * Z * np.sqrt(v_s / (2 * n))
        a = f64(schedule.a_out)[level + 1]
        mean, std = f64(trace["mean"][-1, g]) * a, f64(trace["std"][-1, g]) * a
        np.testing.assert_allclose(mean, mu, atol=Z * np.sqrt(v_s / n))
        np.testing.assert_allclose(std, np.sqrt(v_s), atol=Z * np.sqrt(v_s / (2 * n)))
        expected = -(prec / 2) * dim * v_s + const
        se = (prec / 2) * v_s * np.sqrt(2 * dim / n)
        assert abs(f64(trace["log_prob"][-1, g]).mean() - expected) < Z * se
        # the early trace is not yet there (start at x~ far from mu): the test can fail
        assert abs(f64(trace["log_prob"][0, g]).mean() - expected) > 10 * se


def test_drift_verdict_rule():
    assert drift_verdict(1.2, 1.7, 0, 1.5) == "stays"  # 1.42x
    assert drift_verdict(1.0, 1.6, 0, 1.5) == "drifts"
    assert drift_verdict(1.0, 1.0, 3, 1.5) == "diverged"
    assert drift_verdict(1.0, float("nan"), 0, 1.5) == "diverged"


# ---- end to end: generation, long run, quality, verdict ----------------------------------------
V0 = 0.1  # data ~ N(0, V0 I) in 2D


def experiment(tmp_path, sampler: str = "  step_size_b2: 4e-3\n", **density):
    """FULL_SPEC (T = 6, ULA K = 30, b^2 = 4e-3) with density fields; `sampler` replaces the
    b^2 line of the sampler block."""
    lines = "".join(f"  {k}: {v}\n" for k, v in density.items())
    spec = replace_once(FULL_SPEC, "  step_size_b2: 4e-3\n", sampler)
    spec += "density:\n" + lines
    return build(load_spec(write(tmp_path, "spec.yaml", spec)))


def exact_network(exp, mean0=(0.0, 0.0), var0=None):
    """Quadratic levels equal to the forward process's marginals of N(0, V0 I) data (the
    conditionals are then the exact posteriors); level 0's mean and variance can be changed."""
    s = exp.schedule
    var_x = f64(s.abar[:-1]) ** 2 * V0 + f64(s.sigmabar[:-1]) ** 2
    variances = f64(s.a_out[1:]) ** 2 * var_x
    means = np.zeros((s.num_levels, 2))
    means[0] = mean0
    if var0 is not None:
        variances[0] = var0
    scale = exp.g_scale
    return LevelQuadratic(
        jnp.asarray(means, jnp.float32), jnp.asarray(variances, jnp.float32), scale
    )


@pytest.fixture(scope="module")
def heldout():
    rng = np.random.default_rng(0)
    return tuple(np.sqrt(V0) * rng.standard_normal((2, 3000, 2)).astype(np.float32))


def test_long_run_stable_chain_stays(tmp_path, heldout):
    """Exact conditionals: quality stays near the floor, the verdict is "stays"; the chains start
    from exactly the sample stage's samples; the traces are thinned as specified. (Steps of
    0.2 sigma^2 at every level, so that K = 30 steps already mix.)"""
    exp = experiment(
        tmp_path, "  step_size_b2: 0.2\n  step_size_rule: tether\n", long_run_steps=1000,
        long_run_thin=100, long_run_horizons="[100]", long_run_chains=512, long_run_levels="[0, 5]",
    )  # fmt: skip
    ebm = exp.ebm(exact_network(exp))
    key = exp.key("sample")
    metrics, traces = run_long(exp, ebm, key, *heldout)
    assert metrics["verdict"] == "stays", metrics
    assert metrics["horizons"] == [30, 130, 1030] and metrics["levels"] == [0, 5]
    np.testing.assert_array_equal(traces["step"], np.arange(30, 1031, 100))
    assert traces["log_prob_quantiles"].shape == (11, 2, 5)
    assert traces["samples"].shape == (3, 2, 512, 2)
    for lv in (0, 5):
        per = metrics[f"level_{lv}"]
        assert per["nonfinite_chains"] == 0
        for h in (30, 130, 1030):
            assert per[f"at_{h}"]["swd_ratio"] < 1.5
    start = sample_many(ebm, exp.eval_sampler, key, 512, (2,), 512, progress=False)
    np.testing.assert_allclose(traces["samples"][0, 0], start, atol=1e-6)
    long_run_figure(tmp_path / "long_run.png", traces, "stable")
    assert (tmp_path / "long_run.png").stat().st_size > 10_000


def test_long_run_flags_drift_and_divergence(tmp_path, heldout):
    """Level 0's mode far from the data: K steps barely leave the tether, the long chain goes
    to the mode: "drifts". A level 0 of negative curvature: the chains blow up: "diverged"."""
    exp = experiment(
        tmp_path, long_run_steps=2000, long_run_thin=500, long_run_horizons="[]",
        long_run_chains=256,
    )  # fmt: skip
    key = exp.key("sample")
    metrics, traces = run_long(exp, exp.ebm(exact_network(exp, (1.5, 1.5), 0.2)), key, *heldout)
    per = metrics["level_0"]
    assert per["verdict"] == "drifts" and metrics["verdict"] == "drifts", per
    assert per["swd_ratio_end_over_start"] > 3.0
    mean = traces["mean"][:, 0]  # level 0, (records, 2): moved from the data's 0 to the mode
    assert np.all(np.abs(mean[0]) < 0.1) and np.all(mean[-1] > 0.4), mean
    metrics, traces = run_long(exp, exp.ebm(exact_network(exp, var0=-0.002)), key, *heldout)
    per = metrics["level_0"]
    assert per["verdict"] == "diverged" and per["nonfinite_chains"] > 0, per
    assert per["at_2030"]["swd_ratio"] is None and np.isfinite(per["at_30"]["swd_ratio"])
    long_run_figure(tmp_path / "diverged.png", traces, "diverged")


def test_bad_levels_and_horizons_are_named(tmp_path):
    from drlx.spec import SpecError

    exp = experiment(tmp_path, long_run_levels="[0, 6]")
    with pytest.raises(ValueError, match=r"density.long_run_levels.*\[6\]"):
        run_long(
            exp, exp.ebm(exact_network(exp)), exp.key("sample"), np.zeros((4, 2)), np.zeros((4, 2))
        )
    with pytest.raises(SpecError, match="long_run_horizons"):
        experiment(tmp_path, long_run_horizons="[150]")
