"""Langevin chains and generation on a Gaussian target with closed-form moments.

With the quadratic network of helpers.QuadraticEnergy, g / k_t = -||y - m||^2 / (2 v), so
p(y | x~) is Gaussian: precision P = 1/v + tau/sigma^2 (tau = 0 at the top level, 1 below) and
mean mu = (m/v + tau x~/sigma^2) / P, variance V = 1/P.

ULA on it is linear. With step h = s^2, noise scale n and c = 1 - h P / 2,
    y_{k+1} - mu = c (y_k - mu) + n sqrt(h) eps,
so from y_0 = x~:  E y_K = mu + c^K (x~ - mu),  Var y_K = n^2 h (1 - c^{2K}) / (1 - c^2),
and the stationary variance is n^2 h / (1 - c^2) = n^2 V / (1 - h / (4 V)) (since
1 - c^2 = h P - h^2 P^2 / 4): ULA's O(h) bias, V h / (4 V) to first order.

MALA is exact: after enough steps its chains are N(mu, V) at any step size (where ULA is biased).
Underdamped Langevin is stationary at N(mu, n^2 V) up to its solver's discretisation bias
(O(h^2) for ALIGN, O(h^3) for QUICSORT and ShOULD). MALA is also checked on a non-Gaussian 2D
target against moments and marginal CDFs computed by quadrature.

Monte Carlo tolerances are Z = 5 standard errors; keys are fixed, so each check is deterministic.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import QuadraticEnergy, random_mlp

from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.samplers.base import target_from_log_prob
from drlx.samplers.mala import MALA, mala_step
from drlx.samplers.many import sample_many
from drlx.samplers.progressive import generate, recover
from drlx.samplers.ula import ULA
from drlx.samplers.underdamped import Underdamped

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


@eqx.filter_jit
def run_mala(ebm, sampler, x_tilde, t, keys):
    return sampler.run(ebm.target(x_tilde, t), x_tilde, ebm.step_sq[t], keys)


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


SAMPLERS = {
    "ula": ULA(30, 1.0),
    "mala": MALA(30),
    "underdamped": Underdamped(30, 1.0, 1.0, True, diffrax.ALIGN()),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_chain_invariant_to_batch_composition(mlp_ebm, name):
    n, T = 64, mlp_ebm.schedule.num_levels
    root = jax.random.key(7)
    keys = per_example_keys(root, n)
    x_next = jax.random.normal(jax.random.fold_in(root, 1000), (n, 2))
    t = jax.random.randint(jax.random.fold_in(root, 1001), (n,), 0, T)
    sampler = SAMPLERS[name]
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


# ---- MALA and underdamped Langevin: stationary moments on the Gaussian -------------------------
def stationary_z(schedule, sampler, ratio, seed, n_chains, temperature=1.0):
    """Run `sampler` at levels LEVELS with s^2 = ratio * V from y = x~; return per level
    (y - mu) / sqrt(temperature * V), which is standard normal if the chains are stationary at
    the (tempered) Gaussian conditional, and the sampler's output (for acceptance rates)."""
    T = schedule.num_levels
    sigma2, tau = np64(schedule.sigma) ** 2, np64(schedule.tethered)
    mean = np.linspace(-0.5, 0.5, DIM)
    prec = {lv: 1 / VAR + tau[lv + 1] / sigma2[lv + 1] for lv in LEVELS}
    step_sq = np.full(T, 1e-3)
    for lv in LEVELS:
        step_sq[lv] = ratio / prec[lv]
    ebm = quadratic_ebm(schedule, step_sq, mean, VAR, g_scale=sigma2[1:])
    n = n_chains * len(LEVELS)
    key = jax.random.key(seed)
    t = jnp.asarray(np.repeat(LEVELS, n_chains), jnp.int32)
    x_tilde = 0.5 + 0.7 * jax.random.normal(jax.random.fold_in(key, 1), (n, DIM))
    if isinstance(sampler, MALA):
        out = run_mala(ebm, sampler, x_tilde, t, per_example_keys(key, n))
        y = np64(out[0])
    else:
        out = run_chain(ebm, sampler, x_tilde, t, per_example_keys(key, n))
        y = np64(out)
    x_tilde, t = np64(x_tilde), np.asarray(t)
    z = {}
    for lv in LEVELS:
        sel = t == lv
        mu = (mean / VAR + tau[lv + 1] * x_tilde[sel] / sigma2[lv + 1]) / prec[lv]
        z[lv] = (y[sel] - mu) * math.sqrt(prec[lv] / temperature)
    return z, out


def test_mala_exact_where_ula_is_biased(schedule):
    """h = 0.4 V: ULA's stationary variance is V / 0.9 (11% high, about 40 standard errors
    here); MALA's is V."""
    z, (_, acc) = stationary_z(schedule, MALA(120), 0.4, seed=11, n_chains=2048)
    for lv in LEVELS:
        check_standardized(z[lv], f"MALA level {lv}")
    assert 0.5 < float(acc.mean()) < 1.0  # it did reject: the correction was exercised


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, ratio, friction, random_velocity, noise, steps",
    [
        ("quicsort", 0.1, 1.0, True, 1.0, 150),
        ("should", 0.1, 2.0, True, 0.8, 200),  # tempered: N(mu, 0.64 V)
        ("align", 0.02, 0.5, False, 1.0, 300),  # ALIGN is second order: a smaller step
    ],
)
def test_underdamped_stationary_moments(
    schedule, solver, ratio, friction, random_velocity, noise, steps
):
    """Stationary at N(mu, n^2 V): diffrax's (gamma, u, f) are mapped right. The third-order
    solvers' bias at h = 0.1 V (0.3% in variance) is well below the tolerance (1.4%); ULA's
    would be 2.6%."""
    solvers = {"align": diffrax.ALIGN, "quicsort": diffrax.QUICSORT, "should": diffrax.ShOULD}
    sampler = Underdamped(steps, friction, noise, random_velocity, solvers[solver]())
    z, _ = stationary_z(schedule, sampler, ratio, seed=12, n_chains=4096, temperature=noise**2)
    for lv in LEVELS:
        check_standardized(z[lv], f"{solver} level {lv}")


@pytest.mark.slow
def test_underdamped_align_bias_is_second_order(schedule):
    """ALIGN's variance bias is visible at h = 0.4 V and about 4x smaller at h = 0.1 V
    (O(h^2) in SDE time, and h ~ s^2 here): the stationary test above can fail."""
    se = math.sqrt(2.0 / (4096 * DIM))
    bias = {}
    sampler = Underdamped(100, 2.0, 1.0, True, diffrax.ALIGN())
    for ratio in (0.4, 0.1):  # one compilation: only the step sizes change
        z, _ = stationary_z(schedule, sampler, ratio, 13, 4096)
        bias[ratio] = float(np.mean(z[1] ** 2)) - 1.0
    assert bias[0.4] > Z * se, bias
    assert 2.0 < bias[0.4] / bias[0.1] < 8.0, bias


# ---- MALA: the step itself, a non-Gaussian target, acceptance ------------------------------------
def banana_log_prob(y):
    """A tilted double well in y1 with a curved Gaussian y2 | y1: log p up to a constant."""
    y1, y2 = y[..., 0], y[..., 1]
    return -((y1**2 - 1.0) ** 2) + 0.5 * y1 - (y2 - 0.5 * y1**2) ** 2 / (2 * 0.25)


def banana_grad_np(y):
    y1, y2 = y[:, 0], y[:, 1]
    r = (y2 - 0.5 * y1**2) / 0.25
    return np.stack([-4 * y1 * (y1**2 - 1) + 0.5 + r * y1, -r], axis=1)


def test_mala_step_matches_numpy(key):
    """Proposal and the Metropolis-Hastings decision against float64 numpy, written from the
    textbook formula log pi(y') - log pi(y) + log q(y | y') - log q(y' | y)."""
    n = 4000
    k1, k2, k3, k4 = jax.random.split(key, 4)
    y = jax.random.normal(k1, (n, 2))
    eps = jax.random.normal(k2, (n, 2))
    log_u = jnp.log(jax.random.uniform(k3, (n,)))
    h = jnp.exp(jax.random.uniform(k4, (n,), minval=np.log(0.01), maxval=np.log(2.0)))
    target = target_from_log_prob(banana_log_prob)
    value, grad = target(y)
    y_new, v_new, g_new, acc = mala_step(target, y, value, grad, h, eps, log_u)

    yn, en, hn, un = np64(y), np64(eps), np64(h)[:, None], np64(log_u)
    lp = lambda v: np64(banana_log_prob(v))  # noqa: E731 (the function is plain jnp maths)
    prop = yn + 0.5 * hn * banana_grad_np(yn) + np.sqrt(hn) * en

    def log_q(to, frm):
        return -np.sum((to - frm - 0.5 * hn * banana_grad_np(frm)) ** 2, 1) / (2 * hn[:, 0])

    log_alpha = lp(prop) - lp(yn) + log_q(yn, prop) - log_q(prop, yn)
    clear = np.abs(un - log_alpha) > 1e-3  # float32 vs float64 may flip razor-edge cases
    assert clear.mean() > 0.99
    expected = un < log_alpha
    np.testing.assert_array_equal(np.asarray(acc)[clear] == 1.0, expected[clear])
    assert 0.1 < expected.mean() < 0.9  # both outcomes are exercised
    want = np.where(expected[:, None], prop, yn)
    np.testing.assert_allclose(np64(y_new)[clear], want[clear], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np64(v_new)[clear], lp(want)[clear], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np64(g_new)[clear], banana_grad_np(want)[clear], rtol=1e-4, atol=1e-4
    )


@pytest.fixture(scope="module")
def banana_quadrature():
    """Moments and marginal CDFs of the banana target by the trapezoid rule on a fine grid."""
    y1 = np.linspace(-3.5, 3.5, 1401)
    y2 = np.linspace(-3.0, 9.0, 2401)
    grid = np.stack(np.meshgrid(y1, y2, indexing="ij"), axis=-1)
    g1, g2 = grid[..., 0], grid[..., 1]
    log_p = -((g1**2 - 1.0) ** 2) + 0.5 * g1 - (g2 - 0.5 * g1**2) ** 2 / 0.5
    p = np.exp(log_p - log_p.max())
    integrate = lambda f: np.trapezoid(np.trapezoid(f, y2, axis=1), y1)  # noqa: E731
    z = integrate(p)
    fns = {
        "y1": lambda a, b: a,
        "y1^2": lambda a, b: a**2,
        "y2": lambda a, b: b,
        "y2^2": lambda a, b: b**2,
        "y1 y2": lambda a, b: a * b,
    }
    moments = {name: integrate(f(g1, g2) * p) / z for name, f in fns.items()}
    m1, m2 = np.trapezoid(p, y2, axis=1), np.trapezoid(p, y1, axis=0)
    cdf1 = np.concatenate([[0], np.cumsum((m1[1:] + m1[:-1]) / 2 * np.diff(y1))])
    cdf2 = np.concatenate([[0], np.cumsum((m2[1:] + m2[:-1]) / 2 * np.diff(y2))])
    return fns, moments, (y1, cdf1 / cdf1[-1]), (y2, cdf2 / cdf2[-1])


def test_mala_non_gaussian_2d_matches_quadrature(banana_quadrature, key):
    """20000 independent chains, 600 steps of h = 0.2 from a start far from the target
    (y1 ~ N(0, 0.25): E y1 = 0, E y1^2 = 0.25 against 0.40 and 0.88): their end points against
    the quadrature moments (5 standard errors) and marginal CDFs (Kolmogorov-Smirnov).

    The start avoids the quartic tails (|y1| > 2.5), where MALA's proposal overshoots and a
    chain can reject for hundreds of steps; every chain here accepts often."""
    fns, moments, (y1, cdf1), (y2, cdf2) = banana_quadrature
    n = 20_000
    k0, k1 = jax.random.split(key)
    e = jax.random.normal(k0, (n, 2))
    y0 = jnp.stack([0.5 * e[:, 0], 0.125 * e[:, 0] ** 2 + 0.5 * e[:, 1]], axis=1)
    target = target_from_log_prob(banana_log_prob)
    run = eqx.filter_jit(lambda y, k: MALA(600).run(target, y, jnp.full((n,), 0.2), k))
    y, acc = run(y0, per_example_keys(k1, n))
    y = np64(y)
    assert 0.6 < float(acc.mean()) < 0.8 and float(acc.min()) > 0.1
    for name, f in fns.items():
        v = f(y[:, 0], y[:, 1])
        se = v.std() / math.sqrt(n)
        assert abs(v.mean() - moments[name]) < Z * se, (name, v.mean(), moments[name], se)
    # KS: sup |F_n - F| beyond 1.95 / sqrt(n) has probability 0.1%
    for col, (grid, cdf) in enumerate([(y1, cdf1), (y2, cdf2)]):
        x = np.sort(y[:, col])
        f = np.interp(x, grid, cdf)
        ks = max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))
        assert ks < 1.95 / math.sqrt(n), (col, ks)
    # and the target is far from Gaussian: its y1 marginal is bimodal with a skew
    assert abs(moments["y1"]) > 0.2 and moments["y1^2"] > 0.7


def test_mala_acceptance_falls_with_step(key):
    """Mean acceptance decreases with the step and tends to 1 for tiny steps, where MALA
    accepts everything and so follows the ULA chain with the same keys exactly."""
    n = 2000
    k0, k1 = jax.random.split(key)
    y0 = jnp.stack([jnp.sign(jax.random.normal(k0, (n,))), jnp.full((n,), 0.5)], axis=1)
    keys = per_example_keys(k1, n)
    target = target_from_log_prob(banana_log_prob)

    @eqx.filter_jit
    def rate(h):
        return MALA(20).run(target, y0, jnp.full((n,), h), keys)

    steps = [1e-6, 1e-3, 0.03, 0.3, 1.0, 3.0]
    rates = [float(rate(jnp.float32(h))[1].mean()) for h in steps]  # an array: one compilation
    assert rates[0] == 1.0 and rates[1] > 0.999, rates
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)), rates
    assert rates[-1] < 0.2, rates
    y_mala, acc = rate(jnp.float32(1e-6))
    assert float(acc.min()) == 1.0
    y_ula = eqx.filter_jit(ULA(20, 1.0))(target, y0, jnp.full((n,), 1e-6), keys)
    np.testing.assert_allclose(np64(y_mala), np64(y_ula), rtol=1e-6, atol=1e-6)


# ---- the spec selects the sampler -------------------------------------------------------------
def exact_stationary_generation_moments(schedule, mean, var):
    """Per-level mean and variance of x_t when every level's chain reaches its Gaussian
    conditional exactly: y | x~ ~ N((m/v + tau x~/sigma^2) / P, 1/P), x_t = y / a_{t+1}."""
    T = schedule.num_levels
    sigma2, tau, a_out = np64(schedule.sigma) ** 2, np64(schedule.tethered), np64(schedule.a_out)
    m_x, v_x = np.zeros_like(mean), 1.0
    moments = {}
    for t in range(T - 1, -1, -1):
        prec = 1.0 / var + tau[t + 1] / sigma2[t + 1]
        weight = tau[t + 1] / (sigma2[t + 1] * prec)
        m_x = (mean / (var * prec) + weight * m_x) / a_out[t + 1]
        v_x = (1.0 / prec + weight**2 * v_x) / a_out[t + 1] ** 2
        moments[t] = (m_x.copy(), v_x)
    return moments


SPEC_SAMPLERS = {
    "mala": "  kind: mala\n  num_steps: 150\n  step_size_b2: 0.2\n  step_size_rule: tether\n",
    "underdamped": (
        "  kind: underdamped\n  num_steps: 150\n  step_size_b2: 0.2\n  step_size_rule: tether\n"
        "  friction: 1.0\n  solver: quicsort\n"
    ),
}


@pytest.mark.parametrize("kind", SPEC_SAMPLERS)
def test_spec_selects_sampler_and_generates(tmp_path, kind, key):
    """`sampler: {kind: ...}` builds the sampler, and generate() with it on the quadratic
    network reaches, level by level, the exact conditionals (long chains, h = 0.2 sigma^2)."""
    from helpers import FULL_SPEC, replace_once, write

    from drlx.builder import build
    from drlx.spec import load_spec

    old = "  kind: ula\n  num_steps: 30\n  step_size_b2: 4e-3\n"
    text = replace_once(FULL_SPEC, old, SPEC_SAMPLERS[kind])
    exp = build(load_spec(write(tmp_path, "s.yaml", text)))
    expected_type = {"mala": MALA, "underdamped": Underdamped}[kind]
    assert isinstance(exp.eval_sampler, expected_type) and exp.eval_sampler.num_steps == 150
    if kind == "underdamped":
        assert exp.eval_sampler.friction == 1.0 and exp.eval_sampler.noise_scale == 1.0
        assert isinstance(exp.eval_sampler.solver, diffrax.QUICSORT)
    T, n = exp.schedule.num_levels, 4000
    ebm = quadratic_ebm(exp.schedule, exp.step_sq, MEAN, VAR, g_scale=exp.g_scale)
    k_top, k_chain = jax.random.split(key)
    x_top = jax.random.normal(k_top, (n, 2))
    x0, traj = eqx.filter_jit(generate)(ebm, exp.eval_sampler, x_top, per_example_keys(k_chain, n))
    assert x0.shape == (n, 2) and traj.shape == (T, n, 2) and np.all(np.isfinite(np64(traj)))
    exact = exact_stationary_generation_moments(exp.schedule, MEAN, VAR)
    for j in range(T):
        t = T - 1 - j
        m_t, v_t = exact[t]
        x = np64(traj[j])
        np.testing.assert_allclose(x.mean(0), m_t, atol=Z * math.sqrt(v_t / n), err_msg=f"t={t}")
        np.testing.assert_allclose(x.var(0), v_t, rtol=Z * math.sqrt(2.0 / n), err_msg=f"t={t}")


def test_spec_mala_has_no_noise_scale(tmp_path):
    """MALA is exact only at noise scale 1: the spec refuses the field, naming it."""
    from helpers import FULL_SPEC, replace_once, write

    from drlx.spec import SpecError, load_spec

    text = replace_once(FULL_SPEC, "  kind: ula\n", "  kind: mala\n  noise_scale_eval: 0.99\n")
    with pytest.raises(SpecError, match="noise_scale_eval"):
        load_spec(write(tmp_path, "s.yaml", text))
    text = replace_once(FULL_SPEC, "  kind: ula\n", "  kind: underdamped\n  friction: -1\n")
    with pytest.raises(SpecError, match="friction"):
        load_spec(write(tmp_path, "u.yaml", text))


def test_spec_generation_sampler_differs_from_training(tmp_path, key):
    """`sampler.generation` gives generation its own chain while training keeps the block's:
    it inherits the step sizes and (unless set) K, refuses its own step size, and with K = 0
    returns its start (CDRL's initializer alone) without running the dynamics."""
    from helpers import FULL_SPEC, replace_once, write

    from drlx.builder import build
    from drlx.spec import SpecError, load_spec

    old = "  kind: ula\n  num_steps: 30\n  step_size_b2: 4e-3\n"
    gen = old + "  generation:\n    kind: underdamped\n    friction: 0.3\n"
    exp = build(load_spec(write(tmp_path, "g.yaml", replace_once(FULL_SPEC, old, gen))))
    assert isinstance(exp.train_sampler, ULA) and exp.train_sampler.num_steps == 30
    assert isinstance(exp.eval_sampler, Underdamped)
    assert exp.eval_sampler.num_steps == 30 and exp.eval_sampler.friction == 0.3
    plain = build(load_spec(write(tmp_path, "p.yaml", FULL_SPEC)))
    np.testing.assert_array_equal(np.asarray(exp.step_sq), np.asarray(plain.step_sq))
    assert exp.scientific_hash != plain.scientific_hash

    own_k = gen + "    num_steps: 7\n"
    exp = build(load_spec(write(tmp_path, "k.yaml", replace_once(FULL_SPEC, old, own_k))))
    assert exp.eval_sampler.num_steps == 7 and exp.train_sampler.num_steps == 30

    bad = gen + "    step_size_b2: 1e-2\n"
    with pytest.raises(SpecError, match="generation.*step_size_b2"):
        load_spec(write(tmp_path, "b.yaml", replace_once(FULL_SPEC, old, bad)))

    y0 = jax.random.normal(key, (8, 2))
    none = Underdamped(0, 0.3, 1.0, True, diffrax.ALIGN())
    target = lambda y: (jnp.zeros(y.shape[0]), jnp.full_like(y, jnp.nan))  # noqa: E731
    out = none(target, y0, jnp.ones(8), per_example_keys(key, 8))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(y0))
