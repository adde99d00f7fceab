"""Langevin chains and generation on a Gaussian target with closed-form moments.

With the quadratic network of helpers.QuadraticEnergy, g / k_t = -||y - m||^2 / (2 v), so
p(y | x~) is Gaussian: precision P = 1/v + tau/sigma^2 (tau = 0 at the top level, 1 below) and
mean mu = (m/v + tau x~/sigma^2) / P, variance V = 1/P.

ULA on it is linear. With step h = s^2, noise scale n and c = 1 - h P / 2,
    y_{k+1} - mu = c (y_k - mu) + n sqrt(h) eps,
so from y_0 = x~:  E y_K = mu + c^K (x~ - mu),  Var y_K = n^2 h (1 - c^{2K}) / (1 - c^2),
and the stationary variance is n^2 h / (1 - c^2) = n^2 V / (1 - h / (4 V)) (since
1 - c^2 = h P - h^2 P^2 / 4): ULA's O(h) bias, V h / (4 V) to first order.

Monte Carlo tolerances are Z = 5 standard errors; keys are fixed, so each check is deterministic.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import QuadraticEnergy, random_mlp

from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.samplers.many import sample_many
from drlx.samplers.progressive import generate, recover
from drlx.samplers.ula import ULA

Z = 5.0
MEAN = np.array([0.5, -0.25])
VAR = 0.3


def np64(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


def quadratic_ebm(schedule, step_sq, mean, var, g_scale) -> ConditionalEBM:
    """The EBM of N(m, v I) at every level, with output scale g_scale (k_t)."""
    step_sq, g_scale = jnp.asarray(step_sq, jnp.float32), jnp.asarray(g_scale, jnp.float32)
    net = QuadraticEnergy(jnp.asarray(mean, jnp.float32), var, g_scale)
    return ConditionalEBM(network=net, schedule=schedule, step_sq=step_sq, g_scale=g_scale)


@eqx.filter_jit
def run_chain(ebm, sampler, x_tilde, t, keys):
    return sampler(ebm.target(x_tilde, t), x_tilde, ebm.step_sq[t], keys)


def per_example_keys(key, n):
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))


def test_target_is_the_gaussian(schedule, key):
    """The target's value and gradient match the closed-form Gaussian (sanity of the model)."""
    T = schedule.num_levels
    step_sq = np.linspace(1e-3, 5e-3, T)
    mean = np.linspace(-1, 1, 4)
    ebm = quadratic_ebm(schedule, step_sq, mean, VAR, g_scale=np.linspace(0.5, 2.0, T))
    k1, k2 = jax.random.split(key)
    y, xt = jax.random.normal(k1, (12, 4)), jax.random.normal(k2, (12, 4))
    t = jnp.arange(12, dtype=jnp.int32) % T
    values, grad = ebm.target(xt, t)(y)
    y, xt, tn = np64(y), np64(xt), np.asarray(t)
    tau = np64(schedule.tethered)[tn + 1][:, None]
    sig2 = np64(schedule.sigma)[tn + 1][:, None] ** 2
    expected = -((y - mean) ** 2).sum(1) / (2 * VAR) - (tau * (y - xt) ** 2 / (2 * sig2)).sum(1)
    expected_grad = -(y - mean) / VAR - tau * (y - xt) / sig2
    np.testing.assert_allclose(np64(values), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np64(grad), expected_grad, rtol=1e-5, atol=1e-5)


# ---- ULA on the Gaussian ---------------------------------------------------------------------
N_CHAINS = 8192  # per level group
DIM = 32
LEVELS = (1, 5)  # a tethered level and the untethered top level


def chain_experiment(schedule, ratio, num_steps, noise_scale, seed):
    """Run chains at levels LEVELS with s^2 = ratio * V; return per-level standardized output
    (against the exact finite-K moments) and the ratio of the empirical variance to V."""
    T = schedule.num_levels
    sigma2 = np64(schedule.sigma) ** 2
    tau = np64(schedule.tethered)
    mean = np.linspace(-0.5, 0.5, DIM)
    prec = {lv: 1 / VAR + tau[lv + 1] / sigma2[lv + 1] for lv in LEVELS}
    step_sq = np.full(T, 1e-3)
    for lv in LEVELS:
        step_sq[lv] = ratio / prec[lv]
    step_sq = np64(jnp.asarray(step_sq, jnp.float32))  # the exact values the chain uses
    # Output scale k_t = sigma_{t+1}^2, unlike s_t^2: the chain must divide g by k_t, not s_t^2.
    ebm = quadratic_ebm(schedule, step_sq, mean, VAR, g_scale=sigma2[1:])

    n = N_CHAINS * len(LEVELS)
    key = jax.random.key(seed)
    t = jnp.asarray(np.repeat(LEVELS, N_CHAINS), jnp.int32)
    x_tilde = 0.5 + 0.7 * jax.random.normal(jax.random.fold_in(key, 1), (n, DIM))
    y = run_chain(ebm, ULA(num_steps, noise_scale), x_tilde, t, per_example_keys(key, n))
    y, x_tilde, t = np64(y), np64(x_tilde), np.asarray(t)

    out = {}
    for lv in LEVELS:
        sel = t == lv
        p, h = prec[lv], step_sq[lv]
        mu = (mean / VAR + tau[lv + 1] * x_tilde[sel] / sigma2[lv + 1]) / p
        c = 1.0 - h * p / 2.0
        mean_k = mu + c**num_steps * (x_tilde[sel] - mu)
        var_k = noise_scale**2 * h * (1.0 - c ** (2 * num_steps)) / (1.0 - c**2)
        z = (y[sel] - mean_k) / math.sqrt(var_k)
        resid = y[sel] - mu
        out[lv] = {
            "z": z,
            "var_over_V": float(np.mean(resid**2) * p),
            "h_over_V": h * p,
            "transient": c**num_steps,
        }
    return out


@pytest.fixture(scope="module")
def stationary_runs(schedule):
    # c = 0.8 and 0.95: after 100 / 400 steps c^K < 1e-8, so the chains are stationary.
    return {
        0.4: chain_experiment(schedule, 0.4, 100, 1.0, seed=1),
        0.1: chain_experiment(schedule, 0.1, 400, 1.0, seed=2),
    }


def check_standardized(z: np.ndarray, what: str):
    n = z.size
    assert abs(z.mean()) < Z / math.sqrt(n), f"{what}: mean of z {z.mean()}"
    assert abs(z.var() - 1.0) < Z * math.sqrt(2.0 / n), f"{what}: var of z {z.var()}"


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.4, 0.1])
def test_ula_stationary_moments_exact(stationary_runs, ratio):
    """Mean mu and variance V / (1 - h/(4V)), per chain (each has its own tether)."""
    for lv, res in stationary_runs[ratio].items():
        assert res["transient"] < 1e-8
        check_standardized(res["z"], f"ratio {ratio}, level {lv}")


@pytest.mark.slow
def test_ula_variance_bias_shrinks_with_step(stationary_runs):
    """Against the true V the variance is biased by h/(4V) / (1 - h/(4V)); it shrinks with h."""
    n = N_CHAINS * DIM
    se = math.sqrt(2.0 / n)  # relative standard error of a variance estimate
    for lv in LEVELS:
        big, small = stationary_runs[0.4][lv], stationary_runs[0.1][lv]
        for res in (big, small):
            r = res["h_over_V"]
            expected = 1.0 / (1.0 - r / 4.0)
            assert abs(res["var_over_V"] - expected) < Z * se * expected, (lv, r, res)
        bias_big, bias_small = big["var_over_V"] - 1.0, small["var_over_V"] - 1.0
        # Expected 0.111 and 0.026: both measurably positive, and 4x smaller step ~ 4x less bias.
        assert bias_small > Z * se and bias_big > Z * se
        assert bias_small < bias_big / 2.5


def test_ula_transient_moments_with_noise_scale(schedule):
    """Few steps (not yet stationary) and noise_scale 0.8: the exact finite-K moments."""
    res = chain_experiment(schedule, 0.4, 5, 0.8, seed=3)
    for lv, r in res.items():
        assert r["transient"] > 0.3  # far from stationary: the x~ term matters
        check_standardized(r["z"], f"level {lv}")


# ---- determinism and batch invariance ---------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_ebm(schedule):
    net = random_mlp(jax.random.key(42), width=32)
    step_sq = schedule.step_size_sq(4e-3)
    return ConditionalEBM(network=net, schedule=schedule, step_sq=step_sq, g_scale=step_sq)


def test_chain_invariant_to_batch_composition(mlp_ebm):
    n, T = 64, mlp_ebm.schedule.num_levels
    root = jax.random.key(7)
    keys = per_example_keys(root, n)
    x_next = jax.random.normal(jax.random.fold_in(root, 1000), (n, 2))
    t = jax.random.randint(jax.random.fold_in(root, 1001), (n,), 0, T)
    sampler = ULA(30, 1.0)
    recover_jit = eqx.filter_jit(recover)
    batch = np.asarray(recover_jit(mlp_ebm, sampler, x_next, t, keys))
    assert np.all(np.isfinite(batch))
    tether_only = np64(x_next) / np64(mlp_ebm.schedule.a_out)[np.asarray(t) + 1][:, None]
    assert not np.allclose(batch, tether_only, atol=1e-2)  # the chains moved
    for i in (0, 5, 31, 63):
        alone = recover_jit(mlp_ebm, sampler, x_next[i : i + 1], t[i : i + 1], keys[i : i + 1])
        # Same arithmetic up to the order of float32 reductions in the batched matmuls.
        np.testing.assert_allclose(np.asarray(alone)[0], batch[i], rtol=1e-6, atol=1e-6)
    # And a chain does depend on its key (else the check above would be vacuous).
    other = recover_jit(mlp_ebm, sampler, x_next[:1], t[:1], per_example_keys(root, 2)[1:])
    assert not np.allclose(np.asarray(other)[0], batch[0], atol=1e-3)


def test_sample_many_independent_of_chunk_size(mlp_ebm, key):
    sampler = ULA(5, 0.99)
    a = sample_many(mlp_ebm, sampler, key, 40, (2,), chunk=8, progress=False)
    b = sample_many(mlp_ebm, sampler, key, 40, (2,), chunk=32, progress=False)
    c = sample_many(mlp_ebm, sampler, key, 10, (2,), chunk=32, progress=False)
    assert a.shape == (40, 2) and a.dtype == np.float32 and c.shape == (10, 2)
    assert np.all(np.isfinite(a))
    # Sample i depends on (key, i) only; float32 through 6 levels x 5 steps: tolerance 1e-5.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, a[:10], rtol=1e-5, atol=1e-5)
    assert np.unique(np.round(a, 4), axis=0).shape[0] == 40  # distinct samples


# ---- generation on the quadratic model -------------------------------------------------------
def exact_generation_moments(schedule, step_sq, num_steps, noise_scale, mean, var):
    """Per-level mean (per dim) and variance of x_t when x_T ~ N(0, I), by the linear recursion
    y_{k+1} = c y_k + (h/2)(m/v + tau x~/sigma^2) + n sqrt(h) eps, tracking
    y_k = A x~ + B + noise (variance N)."""
    T = schedule.num_levels
    sigma2, tau, a_out = np64(schedule.sigma) ** 2, np64(schedule.tethered), np64(schedule.a_out)
    m_x, v_x = np.zeros_like(mean), 1.0
    moments = {}
    for t in range(T - 1, -1, -1):
        h, s2, ta = step_sq[t], sigma2[t + 1], tau[t + 1]
        c = 1.0 - 0.5 * h * (1.0 / var + ta / s2)
        A, B, N = 1.0, np.zeros_like(mean), 0.0
        for _ in range(num_steps):
            A = c * A + 0.5 * h * ta / s2
            B = c * B + 0.5 * h * mean / var
            N = c**2 * N + noise_scale**2 * h
        m_x = (A * m_x + B) / a_out[t + 1]
        v_x = (A**2 * v_x + N) / a_out[t + 1] ** 2
        moments[t] = (m_x.copy(), v_x)
    return moments


def test_generate_gaussian_levels(schedule, key):
    T, K, ns, n = schedule.num_levels, 30, 0.99, 20_000
    step_sq = schedule.step_size_sq(4e-3)
    ebm = quadratic_ebm(schedule, step_sq, MEAN, VAR, g_scale=step_sq)  # DRL: k_t = s_t^2
    k_top, k_chain = jax.random.split(key)
    x_top = jax.random.normal(k_top, (n, 2))
    x0, traj = eqx.filter_jit(generate)(ebm, ULA(K, ns), x_top, per_example_keys(k_chain, n))
    assert x0.shape == (n, 2) and traj.shape == (T, n, 2)
    np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x0))
    exact = exact_generation_moments(schedule, np64(step_sq), K, ns, MEAN, VAR)
    for j in range(T):
        t = T - 1 - j  # the trajectory runs t = T-1 .. 0
        m_t, v_t = exact[t]
        x = np64(traj[j])
        np.testing.assert_allclose(x.mean(0), m_t, atol=Z * math.sqrt(v_t / n), err_msg=f"t={t}")
        np.testing.assert_allclose(x.var(0), v_t, rtol=Z * math.sqrt(2.0 / n), err_msg=f"t={t}")
    # The top level equilibrates towards N(m, v) (no tether), so the levels are not trivial.
    assert np.all(np.abs(exact[T - 1][0] - MEAN) < 0.1)
