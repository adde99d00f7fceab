"""CDRL's cooperative parts against closed forms, with the Gaussian EBM of helpers.QuadraticEnergy
(level t's conditional p(y | x~) is N(mu, V): precision P = 1/v + 1/sigma^2, mean
mu = (m/v + x~/sigma^2) / P; docs/method.md §11)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import QuadraticEnergy
from jaxtyping import Array

from drlx.cooperative import PROPOSAL_NOISE_TAG, Proposal, initializer_loss, posterior_std
from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.keys import example_keys, per_example_normal
from drlx.models.base import AbstractInitializer
from drlx.samplers.mala import MALA
from drlx.samplers.progressive import recover, tweedie

VAR, MEAN, DIM = 0.3, np.array([0.5, -0.25]), 2


class AffineInitializer(AbstractInitializer):
    """mean(x~, t) = x~ + W_t x~ + b_t: the family holding the Gaussian conditional's mean."""

    weight: Array  # (T,)
    bias: Array  # (T, D)

    def mean(self, x_tilde, t, key=None):
        return x_tilde + self.weight[t][:, None] * x_tilde + self.bias[t]


def np64(v):
    return np.asarray(v, np.float64)


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


def quadratic_ebm(schedule, step_sq, proposal=None):
    T = schedule.num_levels
    g_scale = jnp.ones(T)
    net = QuadraticEnergy(jnp.asarray(MEAN, jnp.float32), VAR, g_scale)
    return ConditionalEBM(net, schedule, jnp.asarray(step_sq, jnp.float32), g_scale, proposal)


def conditional(schedule, x_tilde, t):
    """Mean and variance of the Gaussian conditional of every (x~, t) (tethered levels)."""
    sig2 = np64(schedule.sigma)[np.asarray(t) + 1][:, None] ** 2
    precision = 1 / VAR + 1 / sig2
    return (MEAN / VAR + np64(x_tilde) / sig2) / precision, 1 / precision


def test_posterior_std_is_the_diffusion_posterior(schedule):
    """v_t^2 = Var(a_{t+1} x_t | x_{t+1}, x_0) by Bayes on the forward process, at every level."""
    s = {k: np64(getattr(schedule, k)) for k in ("a", "sigma", "abar", "sigmabar", "a_out")}
    for t in range(schedule.num_levels):
        # x_t ~ N(abar_t x0, sigmabar_t^2), x_{t+1} | x_t ~ N(a x_t, sigma^2): precision sum
        var_x = 1 / (1 / s["sigmabar"][t] ** 2 + s["a"][t + 1] ** 2 / s["sigma"][t + 1] ** 2)
        want = s["a_out"][t + 1] * np.sqrt(var_x)
        assert float(posterior_std(schedule)[t]) == pytest.approx(want, rel=1e-5)


def test_initializer_loss_gradient_closed_form(schedule, key):
    """L = mean_i ||y_i - (x~_i + W x~_i + b + v eps_i)||^2: dL/db = -2 mean_i r_i and
    dL/dW = -2 mean_i <r_i, x~_i>, r_i the residual, per level."""
    n, T = 64, schedule.num_levels
    k1, k2, k3 = jax.random.split(key, 3)
    x_tilde = jax.random.normal(k1, (n, DIM))
    y = jax.random.normal(k2, (n, DIM))
    t = jnp.arange(n, dtype=jnp.int32) % T
    keys = example_keys(k3, n)
    init = AffineInitializer(jnp.linspace(-0.2, 0.3, T), jnp.ones((T, DIM)) * 0.1)
    std = posterior_std(schedule)
    grads = jax.grad(initializer_loss)(init, std, x_tilde, t, keys, y)
    eps = np64(per_example_normal(keys, PROPOSAL_NOISE_TAG, x_tilde))
    xt, tn = np64(x_tilde), np.asarray(t)
    mean = xt + np64(init.weight)[tn][:, None] * xt + np64(init.bias)[tn]
    y0 = mean + np64(std)[tn][:, None] * eps
    r = np64(y) - y0
    want_b = np.stack([-2 * r[tn == k].sum(0) / n for k in range(T)])
    want_w = np.array([-2 * (r[tn == k] * xt[tn == k]).sum() / n for k in range(T)])
    np.testing.assert_allclose(np64(grads.bias), want_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np64(grads.weight), want_w, rtol=1e-5, atol=1e-6)


def test_initializer_learns_the_conditional_mean(schedule, key):
    """Trained as in CDRL against a fixed Gaussian EBM (refined by MALA, which is exact), the
    initializer's mean converges to the conditional mean mu(x~) = c_t x~ + d_t."""
    T, n = schedule.num_levels, 1024
    sig2 = np64(schedule.sigma)[1:] ** 2
    precision = 1 / VAR + 1 / sig2
    step_sq = 0.5 / precision  # a fast-mixing MALA step for each level's variance
    std = posterior_std(schedule)
    init = AffineInitializer(jnp.zeros(T), jnp.zeros((T, DIM)))
    optimizer = optax.adam(optax.exponential_decay(3e-2, 400, 0.02))  # to 6e-4 at the end
    opt_state = optimizer.init(init)
    mala = MALA(40)
    levels = jnp.arange(n, dtype=jnp.int32) % (T - 1)  # the tethered levels

    @eqx.filter_jit
    def step(init, opt_state, key):
        k1, k2 = jax.random.split(key)
        x_tilde = jax.random.normal(k1, (n, DIM))
        keys = example_keys(k2, n)
        ebm = quadratic_ebm(schedule, step_sq, Proposal(init, std))
        y0 = ebm.start(x_tilde, levels, keys)
        y = mala(ebm.target(x_tilde, levels), y0, ebm.step_sq[levels], keys)
        grads = jax.grad(initializer_loss)(init, std, x_tilde, levels, keys, y)
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(init, updates), opt_state

    for i in range(400):
        init, opt_state = step(init, opt_state, jax.random.fold_in(key, i))
    c = (1 / sig2) / precision  # mu = c x~ + (m / v) / P
    d = (MEAN[None] / VAR) / precision[:, None]
    np.testing.assert_allclose(np64(init.weight)[: T - 1], c[: T - 1] - 1, atol=0.03)
    np.testing.assert_allclose(np64(init.bias)[: T - 1], d[: T - 1], atol=0.03)


def test_tweedie_is_the_posterior_mean(schedule, key):
    """Data x ~ N(m, s^2 I) and a level-0 EBM whose marginal is exactly that of x_0 = abar_0 x
    + sigmabar_0 eps: Tweedie's step gives E[x | x_0] = m + abar_0 s^2 (x_0 - abar_0 m) /
    (abar_0^2 s^2 + sigmabar_0^2)."""
    s2, m = 0.04, np.array([0.3, -0.1])
    abar, sigmabar = float(schedule.abar[0]), float(schedule.sigmabar[0])
    a1 = float(schedule.a_out[1])
    var0 = abar**2 * s2 + sigmabar**2  # Var x_0; in y = a_1 x_0: a_1^2 var0
    T = schedule.num_levels
    net = QuadraticEnergy(jnp.asarray(a1 * abar * m, jnp.float32), a1**2 * var0, jnp.ones(T))
    ebm = ConditionalEBM(net, schedule, jnp.ones(T), jnp.ones(T))
    x0 = jnp.asarray(abar * m + np.sqrt(var0) * np.asarray(jax.random.normal(key, (50, 2))))
    want = m + abar * s2 * (np64(x0) - abar * m) / var0
    np.testing.assert_allclose(np64(tweedie(ebm, x0)), want, rtol=1e-4, atol=1e-5)
    # and it moves the samples: with this noise level, a visible shrink towards the mean
    assert np.abs(np64(tweedie(ebm, x0)) - np64(x0)).max() > 1e-4


def test_chains_from_the_initializer_keep_the_gaussian(schedule, key):
    """An initializer proposing exactly the conditional N(mu, V) (mean mu, spread sqrt V), then
    MALA: the chains' output still has the conditional's mean and variance (5 standard errors)."""
    T, n, level = schedule.num_levels, 8192, 2
    sig2 = float(schedule.sigma[level + 1]) ** 2
    precision = 1 / VAR + 1 / sig2
    c, d = (1 / sig2) / precision, (MEAN / VAR) / precision
    init = AffineInitializer(jnp.full(T, c - 1), jnp.tile(jnp.asarray(d, jnp.float32), (T, 1)))
    std = jnp.full(T, np.sqrt(1 / precision), jnp.float32)
    step_sq = np.full(T, 0.8 / precision)
    ebm = quadratic_ebm(schedule, step_sq, Proposal(init, std))
    x_tilde = jnp.asarray(np.tile([[0.2, -0.4]], (n, 1)), jnp.float32)
    t = jnp.full(n, level, jnp.int32)
    x = recover(ebm, MALA(3), x_tilde, t, example_keys(key, n))
    y = np64(x) * float(schedule.a_out[level + 1])
    mu, var = conditional(schedule, x_tilde[:1], t[:1])
    se_mean = np.sqrt(var / n)
    assert np.all(np.abs(y.mean(0) - mu[0]) < 5 * se_mean)
    se_var = var * np.sqrt(2 / (n - 1))
    assert np.all(np.abs(y.var(0) - var) < 5 * se_var)
    # the same chains from the tether (DRL's start) are still off after 3 steps
    far = recover(quadratic_ebm(schedule, step_sq), MALA(3), x_tilde, t, example_keys(key, n))
    assert np.abs(np64(far).mean(0) * float(schedule.a_out[level + 1]) - mu[0]).max() > 0.01
