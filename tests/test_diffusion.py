"""Noise schedules and the forward process against docs/method.md §2, §4.1 and §5.2.

Schedules are stored as float32, so comparisons with the float64 recomputations below use
relative tolerances of 1e-6 (float32 resolution is 6e-8; a few roundings stack up).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlx.builder import loss_weights
from drlx.diffusion import (
    continuous_time,
    cosine_logsnr_schedule,
    drl_linear_schedule,
    linear_schedule,
    q_sample_pair,
)
from drlx.keys import example_keys

F32_RTOL = 1e-6
REF_T6_SIGMABAR = [0.0100, 0.3238, 0.5862, 0.7785, 0.8980, 0.9603, 0.99998]  # docs/method.md §2.3


def np64(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def drl_reference(num_levels: int, beta_start: float, beta_end: float, n: int) -> dict:
    """docs/method.md §2.3 written out with Python floats, one product at a time."""
    betas = [beta_start + (beta_end - beta_start) * k / (n - 1) for k in range(n)]
    idx = [i * (n // ((num_levels - 1) * 2)) for i in range(num_levels)] + [n - 1]
    a = [math.sqrt(1.0 - betas[0])]
    for lo, hi in zip(idx[:-1], idx[1:], strict=True):
        a.append(math.prod(math.sqrt(1.0 - betas[k]) for k in range(lo + 1, hi + 1)))
    abar = list(np.cumprod(a))
    return {
        "a": np.array(a),
        "sigma": np.sqrt(1.0 - np.array(a) ** 2),
        "abar": np.array(abar),
        "sigmabar": np.sqrt(1.0 - np.array(abar) ** 2),
    }


SCHEDULES = {
    "drl_t6": lambda: drl_linear_schedule(6, 1e-4, 0.02, 1000),
    "linear_t6": lambda: linear_schedule(6, 1e-4, 0.02, 1000),
    "linear_t1k": lambda: linear_schedule(999, 1e-4, 0.02, 1000),
    "cosine_t10": lambda: cosine_logsnr_schedule(10, -5.1, 9.8),
}


def test_t6_sigmabar_matches_reference_table():
    sb = np64(drl_linear_schedule(6, 1e-4, 0.02, 1000).sigmabar)
    assert sb.shape == (7,)
    # The table is rounded to 4 decimals (5 for the top): allow half a unit of the last digit.
    half_unit = np.array([5e-5] * 6 + [5e-6])
    assert np.all(np.abs(sb - np.array(REF_T6_SIGMABAR)) <= half_unit), sb


def test_t6_matches_independent_float64_recomputation():
    sched = drl_linear_schedule(6, 1e-4, 0.02, 1000)
    ref = drl_reference(6, 1e-4, 0.02, 1000)
    for name, expected in ref.items():
        got = np64(getattr(sched, name))
        np.testing.assert_allclose(got, expected, rtol=F32_RTOL, err_msg=name)
    # Level 0 is the data with sigmabar_0 = sqrt(beta_0) = 0.01 exactly.
    assert abs(float(sched.sigmabar[0]) - 0.01) < 1e-8


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_identities(name):
    s = SCHEDULES[name]()
    a, sigma, abar, sigmabar = (np64(v) for v in (s.a, s.sigma, s.abar, s.sigmabar))
    T = s.num_levels
    assert a.shape == (T + 1,) and s.a.dtype == jnp.float32
    np.testing.assert_allclose(abar, np.cumprod(a), rtol=F32_RTOL)
    np.testing.assert_allclose(sigma**2 + a**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(sigmabar**2 + abar**2, 1.0, atol=1e-6)
    assert np.all((a > 0) & (a < 1))
    assert np.all(np.diff(sigmabar) > 0), "noise must grow with the level"
    # y = a_out[i] x_{i-1}: a_i below the top, 1 at the (untethered) top level.
    np.testing.assert_array_equal(np64(s.a_out)[:-1], a[:-1])
    assert float(s.a_out[-1]) == 1.0
    np.testing.assert_array_equal(np64(s.tethered), [1.0] * T + [0.0])


def test_linear_total_contraction_independent_of_grouping():
    # However the DDPM steps are grouped into levels, abar_T is the product over all of them.
    betas = np.linspace(1e-4, 0.02, 1000)
    total = np.prod(np.sqrt(1.0 - betas))
    for T in (2, 6, 37, 999):
        abar = np64(linear_schedule(T, 1e-4, 0.02, 1000).abar)
        np.testing.assert_allclose(abar[-1], total, rtol=1e-5, err_msg=f"T={T}")


def test_linear_t1k_is_one_ddpm_step_per_level():
    s = linear_schedule(999, 1e-4, 0.02, 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert s.num_levels == 999
    np.testing.assert_allclose(np64(s.a) ** 2, 1.0 - betas, rtol=F32_RTOL)
    # sigma_i^2 = beta_i, relative (beta is small, so this is the sharper check).
    np.testing.assert_allclose(np64(s.sigma) ** 2, betas, rtol=1e-5)


def test_cosine_logsnr_schedule():
    T, lmin, lmax = 10, -5.1, 9.8
    s = cosine_logsnr_schedule(T, lmin, lmax)
    b = math.atan(math.exp(-lmax / 2))
    a = math.atan(math.exp(-lmin / 2)) - b
    logsnr = np.array([-2.0 * math.log(math.tan(a * i / T + b)) for i in range(T + 1)])
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(np64(s.abar) ** 2, sigmoid(logsnr), rtol=F32_RTOL)
    np.testing.assert_allclose(np64(s.sigmabar) ** 2, sigmoid(-logsnr), rtol=F32_RTOL)
    # logSNR read back from the stored arrays (sigmabar is stored directly, so this is accurate
    # even at the data end where 1 - abar^2 = 5.5e-5).
    got = 2 * np.log(np64(s.abar)) - 2 * np.log(np64(s.sigmabar))
    np.testing.assert_allclose(got[[0, -1]], [lmax, lmin], atol=1e-5)
    np.testing.assert_allclose(got, logsnr, atol=1e-5)


@pytest.mark.parametrize("b2", [2e-4, 4e-3])
def test_step_sizes_and_weights(b2):
    s = drl_linear_schedule(6, 1e-4, 0.02, 1000)
    ref = drl_reference(6, 1e-4, 0.02, 1000)
    c2 = ref["sigmabar"][:-1] / ref["sigmabar"][0]
    expected = b2 * c2 * ref["sigma"][1:] ** 2
    np.testing.assert_allclose(np64(s.step_size_sq(b2)), expected, rtol=1e-5)
    np.testing.assert_allclose(np64(s.step_size_sq(b2, "drl")), expected, rtol=1e-5)
    np.testing.assert_allclose(
        np64(s.step_size_sq(b2, "tether")), b2 * ref["sigma"][1:] ** 2, rtol=1e-5
    )
    k = s.step_size_sq(b2)
    w = np64(loss_weights("drl", s, k))
    np.testing.assert_allclose(w, ref["sigma"][1] / ref["sigma"][1:], rtol=1e-5)
    assert w.shape == (6,) and w[0] == pytest.approx(1.0, abs=1e-7)
    np.testing.assert_array_equal(np64(loss_weights("uniform", s, k)), np.ones(6))
    np.testing.assert_allclose(
        np64(loss_weights("likelihood", s, k)), expected[0] / expected, rtol=1e-5
    )


# ---- forward process: Monte Carlo moments ---------------------------------------------------
N_PER_LEVEL = 50_000
X0_ROW = np.array([0.7, -0.3])
Z = 5.0  # tolerance in standard errors; the key is fixed, so this is a deterministic check


@pytest.fixture(scope="module")
def schedule_t6():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


@pytest.mark.parametrize("shared_noise", [False, True])
def test_q_sample_pair_moments(schedule_t6, shared_noise):
    s = schedule_t6
    T = s.num_levels
    n = N_PER_LEVEL * T
    x0 = jnp.tile(jnp.asarray(X0_ROW, jnp.float32), (n, 1))
    t = jnp.arange(n, dtype=jnp.int32) % T  # every level in one batch: per-example broadcasting
    x_t, x_next = q_sample_pair(s, x0, t, example_keys(jax.random.key(11), n), shared_noise)
    assert x_t.shape == x0.shape and x_next.shape == x0.shape
    x_t, x_next, t = np64(x_t), np64(x_next), np.asarray(t)
    a, abar, sbar = np64(s.a), np64(s.abar), np64(s.sigmabar)
    for level in range(T):
        u, v = x_t[t == level], x_next[t == level]
        m = len(u)
        s0, s1 = sbar[level], sbar[level + 1]
        # Means: standard error sd / sqrt(m).
        np.testing.assert_allclose(u.mean(0), abar[level] * X0_ROW, atol=Z * s0 / math.sqrt(m))
        np.testing.assert_allclose(v.mean(0), abar[level + 1] * X0_ROW, atol=Z * s1 / math.sqrt(m))
        # Standard deviations of a normal sample: standard error sd / sqrt(2 m).
        np.testing.assert_allclose(u.std(0), s0, atol=Z * s0 / math.sqrt(2 * m))
        np.testing.assert_allclose(v.std(0), s1, atol=Z * s1 / math.sqrt(2 * m))
        # Cross-covariance: Markov step a_{t+1} sigmabar_t^2; shared eps sigmabar_t sigmabar_{t+1}.
        cov = ((u - u.mean(0)) * (v - v.mean(0))).mean(0)
        expected = s0 * s1 if shared_noise else a[level + 1] * s0**2
        other = a[level + 1] * s0**2 if shared_noise else s0 * s1
        se = math.sqrt((s0**2 * s1**2 + expected**2) / m)  # sd of a bivariate normal's product
        np.testing.assert_allclose(cov, expected, atol=Z * se, err_msg=f"level {level}")
        assert abs(expected - other) > 4 * Z * se, "the two noise models must be distinguishable"


def test_continuous_time_of_the_cosine_schedule_is_linear():
    """logSNR(u) = -2 log tan(a u + b) makes CDRL's time 1000 arctan(exp(-logSNR/2)) / (pi/2)
    = 1000 (a u + b) / (pi/2): linear in u = i / T (docs/method.md §11.3)."""
    lmin, lmax, T = -5.1, 9.8, 6
    b = np.arctan(np.exp(-lmax / 2))
    a = np.arctan(np.exp(-lmin / 2)) - b
    want = 1000 * (a * np.arange(T + 1) / T + b) / (np.pi / 2)
    got = np64(continuous_time(cosine_logsnr_schedule(T, lmin, lmax)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] < 5 and got[-1] > 900  # near 0 for data, towards 1000 for noise
