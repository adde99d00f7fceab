"""AIS recovers normalizing constants known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlx.density.ais import ais_log_z, gaussian_log_density, log_mean_exp


@pytest.mark.parametrize("dim", [2, 8])
def test_ais_log_z_of_a_tilted_gaussian(dim):
    """pi_1(y) = exp(-||y - m||^2 / (2 v)) N(y; x~, s^2) * c: a Gaussian product, Z closed form."""
    x_tilde = jnp.full((dim,), 0.3)
    m, v, s, c = jnp.full((dim,), -0.5), 0.05, 0.4, 2.0

    def log_target(y):
        quad = -jnp.sum((y - m) ** 2, axis=-1) / (2 * v)
        return quad + gaussian_log_density(y, x_tilde, jnp.full(len(y), s)) + jnp.log(c)

    # integral of exp(-|y-m|^2/2v) N(y; x~, s^2) = (2 pi v)^{D/2} N(m; x~, (v + s^2))
    var = v + s**2
    exact = (
        0.5 * dim * np.log(2 * np.pi * v)
        - 0.5 * float(jnp.sum((m - x_tilde) ** 2)) / var
        - 0.5 * dim * np.log(2 * np.pi * var)
        + np.log(c)
    )
    chains = 1024
    base = jnp.tile(x_tilde, (chains, 1))
    log_w, acc = jax.jit(ais_log_z, static_argnums=(0, 3, 6))(
        log_target, base, jnp.full(chains, s), 500, jnp.full(chains, 0.1), jax.random.key(0), 2
    )
    est, se = log_mean_exp(log_w)
    assert 0.3 < float(acc) <= 1.0
    assert float(se) < 0.1  # the estimate is precise enough for the check to mean something
    assert abs(float(est) - exact) < 3 * float(se) + 1e-3, (float(est), exact, float(se))
