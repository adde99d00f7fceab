"""The likelihood bound against closed forms (Gaussian data, quadratic energies), AIS against 2D
quadrature, and the 8-bit bookkeeping of bits/dim."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AbstractFixedNetwork
from jaxtyping import Array

from drlx.density.ais import AISSettings
from drlx.density.bound import bits_per_dim, dequantize, path_bound
from drlx.density.levels import TopBase, conditional_log_z
from drlx.density.quadrature import conditional_log_z_grid
from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.models.mlp import MLPEnergy

DIM = 2


class QuadraticLevels(AbstractFixedNetwork):
    """g(y, t) = -k_t ||y - c_t||^2 / (2 w_t): level t's f = g / k_t is N(c_t, w_t I) up to a
    constant, with a centre and a variance of its own per level."""

    centre: Array  # (T, D)
    var: Array  # (T,)
    scale: Array  # (T,), the EBM's g_scale k_t

    def embed(self, t):
        return self.centre[t], self.var[t], self.scale[t]

    def energy(self, y, context):
        c, w, k = context
        return -k * jnp.sum((y - c) ** 2, axis=-1) / (2.0 * w)


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


def cumulative(schedule) -> np.ndarray:
    """c_t = a_1 ... a_t (c_0 = 1): x_t | x_0 ~ N(c_t x_0, (1 - c_t^2) I) on the bound's path."""
    a = np.asarray(schedule.a, np.float64)
    return np.concatenate([[1.0], np.cumprod(a[1:])])


def quadratic_ebm(schedule, centre, var) -> ConditionalEBM:
    scale = jnp.asarray(schedule.sigma[1:] ** 2)
    net = QuadraticLevels(jnp.asarray(centre, jnp.float32), jnp.asarray(var, jnp.float32), scale)
    return ConditionalEBM(network=net, schedule=schedule, step_sq=scale, g_scale=scale)


def closed_form_bound(schedule, centre, var, x0) -> np.ndarray:
    """E_q of the bound for f_t(y) = -||y - c_t||^2 / (2 w_t), by Gaussian integrals.

    Per tethered level: E[f_t(a x_t)] - E[log Z_t(x_{t+1})] + D log a + (D/2) log(2 pi sigma^2)
    (the tether and log q cancel), with Z_t(x~) = (2 pi w s^2 / (w + s^2))^(D/2)
    exp(-||x~ - c||^2 / (2 (w + s^2))); top: E[f(x_{T-1})] - (D/2) log(2 pi w).
    """
    a = np.asarray(schedule.a, np.float64)
    sig2 = np.asarray(schedule.sigma, np.float64) ** 2
    ct = cumulative(schedule)
    x0 = np.asarray(x0, np.float64)
    num = len(var)

    def e_sq(scale, noise_var, c):  # E||scale x_0 + noise - c||^2 with noise ~ N(0, noise_var I)
        return np.sum((scale * x0 - c) ** 2, axis=1) + DIM * noise_var

    total = np.zeros(len(x0))
    for t in range(num - 1):
        w, c, s2 = var[t], centre[t], sig2[t + 1]
        total += -e_sq(a[t + 1] * ct[t], a[t + 1] ** 2 * (1 - ct[t] ** 2), c) / (2 * w)
        log_z_const = 0.5 * DIM * np.log(2 * np.pi * w * s2 / (w + s2))
        total -= log_z_const - e_sq(ct[t + 1], 1 - ct[t + 1] ** 2, c) / (2 * (w + s2))
        total += DIM * np.log(a[t + 1]) + 0.5 * DIM * np.log(2 * np.pi * s2)
    w, c = var[-1], centre[-1]
    total += -e_sq(ct[num - 1], 1 - ct[num - 1] ** 2, c) / (2 * w)
    return total - 0.5 * DIM * np.log(2 * np.pi * w)


SETTINGS = AISSettings(num_chains=32, num_temperatures=100)


def run_bound(ebm, x0, seed=0, log_density=None):
    top = TopBase(jnp.zeros(DIM), jnp.asarray(1.0))
    return path_bound(
        ebm, x0, jax.random.key(seed), SETTINGS, top, 2048, 64, log_density=log_density
    )


def test_exact_reverse_conditionals_give_the_data_log_density(schedule):
    """Data N(mu, s^2 I) and each level's f the exact marginal of its y: the model's joint is the
    forward joint, so every path's value is log N(x_0; mu, s^2 I), up to AIS error only."""
    mu, s2 = np.array([0.3, -0.2]), 0.25
    a, ct = np.asarray(schedule.a, np.float64), cumulative(schedule)
    num = schedule.num_levels
    v = ct[:num] ** 2 * s2 + 1 - ct[:num] ** 2  # Var x_t
    scale_y = np.concatenate([a[1:num], [1.0]])  # y = a_{t+1} x_t, y = x_{T-1} at the top
    centre = (scale_y * ct[:num])[:, None] * mu
    ebm = quadratic_ebm(schedule, centre, scale_y**2 * v)
    x0 = mu + np.sqrt(s2) * np.random.default_rng(0).standard_normal((64, DIM))

    def log_q(x, scale, noise_std):  # the data diffused: N(scale mu, (scale^2 s2 + std^2) I)
        var = scale**2 * s2 + noise_std**2
        return -np.sum((x - scale * mu) ** 2, axis=1) / (2 * var) - 0.5 * DIM * np.log(
            2 * np.pi * var
        )

    res = run_bound(ebm, x0.astype(np.float32), log_density=log_q)
    exact = -np.sum((x0 - mu) ** 2, axis=1) / (2 * s2) - 0.5 * DIM * np.log(2 * np.pi * s2)
    err = res.per_example - exact  # no path variance: only the AIS errors are left
    se = np.sqrt(np.sum(res.log_z_se**2, axis=1) + res.top_log_z_se**2)
    assert np.all(np.abs(err) < 5 * se + 1e-3), (err, se)
    assert abs(np.mean(err)) < 4 * np.sqrt(np.sum(se**2)) / len(err) + 5e-3
    assert np.mean(se) < 0.15  # AIS is precise enough for the check to mean something
    np.testing.assert_allclose(res.terms.sum(axis=1), res.per_example, rtol=1e-6)
    # the true process's terms: they add up to log q(x_0) exactly, and the exact model matches
    # them level by level on every path (its KL from the truth is 0 at each level)
    np.testing.assert_allclose(res.reference_terms.sum(axis=1), exact, rtol=1e-5, atol=1e-5)
    level_se = np.concatenate([res.log_z_se, np.full((len(x0), 1), res.top_log_z_se)], axis=1)
    assert np.all(np.abs(res.reference_terms - res.terms) < 5 * level_se + 1e-3)


def test_wrong_quadratic_energy_matches_the_closed_form_bound(schedule):
    """Arbitrary centres and variances: the bound is below log p(x_0) by a KL; its expectation is
    a Gaussian integral, computed independently in float64."""
    rng = np.random.default_rng(1)
    num = schedule.num_levels
    centre = rng.uniform(-0.5, 0.5, (num, DIM))
    var = rng.uniform(0.2, 1.5, num)
    ebm = quadratic_ebm(schedule, centre, var)
    x0 = (0.5 * rng.standard_normal((256, DIM))).astype(np.float32)
    res = run_bound(ebm, x0, seed=3)
    diff = res.per_example - closed_form_bound(schedule, centre, var, x0)
    se = np.std(diff, ddof=1) / np.sqrt(len(diff))
    assert se < 0.1  # the comparison is sharp enough to catch e.g. a missing Jacobian (~2.5)
    assert abs(np.mean(diff)) < 4 * se + 0.01, (np.mean(diff), se)


def random_leaky_mlp(key, width=32, amplitude=3.0):
    """A random leaky-ReLU MLPEnergy (the toys' activation) whose read-out is not zero."""
    k_net, k_w = jax.random.split(key)
    net = MLPEnergy(DIM, width, 2, 8, "leaky_relu", 0, 1.0, key=k_net)
    w = amplitude * jax.random.normal(k_w, net.readout.weight.shape) / width
    return eqx.tree_at(lambda n: n.readout.weight, net, w)


class ConfinedTop(AbstractFixedNetwork):
    """A network plus -k ||y||^2 / 2 at the top level, so that level's exp(f) is a proper
    density (a random leaky-ReLU network alone grows linearly and need not be integrable)."""

    net: MLPEnergy
    scale: Array
    top: int = eqx.field(static=True)

    def embed(self, t):
        return self.net.embed(t), (t == self.top) * self.scale[t]

    def energy(self, y, context):
        inner, k = context
        return self.net.energy(y, inner) - k * jnp.sum(y**2, axis=-1) / 2.0


def test_ais_matches_quadrature_on_a_random_2d_mlp(schedule):
    """102 tethers over all six levels: AIS log Z within 0.01 nats (mean absolute error) of a
    256 x 256 midpoint rule, itself converged (against 384 x 384) to well below that."""
    scale = schedule.sigma[1:] ** 2
    num, per = schedule.num_levels, 17
    net = ConfinedTop(random_leaky_mlp(jax.random.key(4)), scale, num - 1)
    ebm = ConditionalEBM(network=net, schedule=schedule, step_sq=scale, g_scale=scale)
    t = np.repeat(np.arange(num), per)
    x_tilde = (0.8 * np.random.default_rng(2).standard_normal((len(t), DIM))).astype(np.float32)
    top = TopBase(jnp.zeros(DIM), jnp.asarray(1.0))
    quad = conditional_log_z_grid(ebm, x_tilde, t, top, 256)
    finer = conditional_log_z_grid(ebm, x_tilde, t, top, 384)
    assert np.max(np.abs(quad.log_z - finer.log_z)) < 2e-3
    assert np.max(quad.log_edge_share) < -20  # the box holds the mass
    # the network matters: log Z varies over the tethers by more than a nat
    assert np.ptp(quad.log_z[t < num - 1]) > 1.0
    settings = AISSettings(num_chains=64, num_temperatures=200)
    res = conditional_log_z(ebm, x_tilde, t, jax.random.key(5), settings, top, chunk=34)
    err = res.log_z - quad.log_z
    assert np.mean(np.abs(err)) < 0.01, (np.mean(np.abs(err)), np.max(np.abs(err)))
    assert np.all(np.abs(err) < 6 * res.log_z_se + 0.01)  # the reported errors are honest
    assert 0.4 < np.mean(res.acceptance) < 0.9


def test_bits_per_dim_of_the_uniform_model_is_eight():
    """A density uniform over the 256 bins of every pixel gives exactly 8 bits/dim; dequantized
    pixels stay in their own bin."""
    dim = 64
    width = 256 * (1 / 127.5)  # the union of the bins in model space
    assert bits_per_dim(np.array([-dim * np.log(width)]), dim)[0] == pytest.approx(8.0)
    k = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1))
    x = (k / 127.5 - 1).astype(np.float32)
    z = dequantize(x, 0)
    assert np.all(np.abs((z.astype(np.float64) + 1) * 127.5 - k) <= 0.5 + 1e-3)
    assert np.std((z.astype(np.float64) + 1) * 127.5 - k) == pytest.approx(12**-0.5, rel=0.05)
    with pytest.raises(ValueError, match="8-bit"):
        dequantize(x + 0.001, 0)
