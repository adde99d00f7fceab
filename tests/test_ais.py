"""AIS recovers normalizing constants known in closed form; a problem's estimate does not depend
on the batch it runs in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_mlp

from drlx.density.ais import AISSettings, annealed_importance_sampling, log_mean_exp
from drlx.density.levels import TopBase, conditional_log_z
from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("base_proposals", [True, False])
def test_ais_log_z_of_a_tilted_gaussian(dim, base_proposals):
    """pi_1(y) = c exp(-||y - m||^2 / (2 v)) exp(-||y - x~||^2 / (2 s^2)): Z in closed form."""
    n, x_t, m, v, s, c = 8, 0.3, -0.2, 0.05, 0.4, 2.0
    x_tilde = jnp.full((n, dim), x_t)
    settings = AISSettings(num_chains=64, num_temperatures=300, base_proposals=base_proposals)

    def target(y):
        def log_pi(y):
            tether = jnp.sum((y - x_t) ** 2, axis=-1) / (2 * s**2)
            return -jnp.sum((y - m) ** 2, axis=-1) / (2 * v) - tether + jnp.log(c)

        return log_pi(y), jax.grad(lambda v_: jnp.sum(log_pi(v_)))(y)

    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(n))
    res = jax.jit(annealed_importance_sampling, static_argnums=(0, 4))(
        target, x_tilde, jnp.full(n, s), keys, settings
    )
    # the Gaussian product: (2 pi v s^2 / (v + s^2))^(D/2) exp(-|m - x~|^2 / (2 (v + s^2)))
    exact = (
        0.5 * dim * np.log(2 * np.pi * v * s**2 / (v + s**2))
        - dim * (m - x_t) ** 2 / (2 * (v + s**2))
        + np.log(c)
    )
    err = np.asarray(res.log_z) - exact
    se = np.asarray(res.log_z_se)
    assert 0.4 < float(np.mean(res.acceptance)) < 0.9
    assert np.all(se < 0.15)  # precise enough for the check to mean something
    assert np.all(np.abs(err) < 4 * se + 1e-3), (err, se)
    assert abs(np.mean(err)) < 4 * np.sqrt(np.sum(se**2)) / n + 1e-3


def test_log_mean_exp_matches_numpy():
    w = np.random.default_rng(0).normal(size=(3, 50)) * 2.0
    est, se = log_mean_exp(jnp.asarray(w))
    e = np.exp(w)
    np.testing.assert_allclose(est, np.log(e.mean(1)), rtol=1e-5)
    np.testing.assert_allclose(se, e.std(1, ddof=1) / np.sqrt(50) / e.mean(1), rtol=1e-4)


def test_estimate_does_not_depend_on_chunk_or_neighbours():
    """Problem i's randomness is fold_in(key, ids[i]): the same in any chunk, with any others."""
    schedule = drl_linear_schedule(6, 1e-4, 0.02, 1000)
    scale = schedule.sigma[1:] ** 2
    ebm = ConditionalEBM(random_mlp(jax.random.key(1)), schedule, scale, scale)
    x_tilde = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    t = np.arange(6)
    top = TopBase(jnp.zeros(2), jnp.asarray(1.0))
    settings = AISSettings(num_chains=8, num_temperatures=20)
    key = jax.random.key(2)
    whole = conditional_log_z(ebm, x_tilde, t, key, settings, top, chunk=6)
    pieces = conditional_log_z(ebm, x_tilde, t, key, settings, top, chunk=4)
    alone = conditional_log_z(ebm, x_tilde[3:4], t[3:4], key, settings, top, 1, ids=[3])
    np.testing.assert_allclose(whole.log_z, pieces.log_z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole.log_z[3], alone.log_z[0], rtol=1e-5, atol=1e-5)
