"""Annealed importance sampling (Neal 2001) for the normalizing constant of each conditional EBM.

Path: log pi_beta(y) = (1 - beta) log q0(y) + beta log pi_1(y), with q0 a normalized Gaussian
(the tether N(x~, sigma^2 I) at tethered levels, a Gaussian of its own at the top level) and
pi_1 the unnormalized conditional. With y_0 ~ q0 and a pi_beta_k-invariant kernel (MALA) after
each rise of beta, the weight log w = sum_k (beta_k - beta_{k-1}) (log pi_1 - log q0)(y_{k-1})
gives Z = E[w], estimated by log-mean-exp over chains.
Status: engine and closed-form tests only; the density stage (issue 4) is not wired yet.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

LogDensity = Callable[[Array], Array]  # (B, *D) -> (B,)


def gaussian_log_density(y: Array, mean: Array, std: Array) -> Array:
    """log N(y; mean, std^2 I) per example; mean like y, std per example (B,)."""
    d = y[0].size
    z = ((y - mean) / std.reshape((-1,) + (1,) * (y.ndim - 1))).reshape(len(y), -1)
    return -0.5 * jnp.sum(z**2, axis=-1) - d * jnp.log(std) - 0.5 * d * jnp.log(2 * jnp.pi)


def _mala_step(log_p: LogDensity, y: Array, eps: Array, key: PRNGKeyArray) -> tuple[Array, Array]:
    """One Metropolis-adjusted Langevin step with per-example step size eps (B,)."""
    e = eps.reshape((-1,) + (1,) * (y.ndim - 1))
    value_grad = jax.value_and_grad(lambda v: jnp.sum(log_p(v)))
    k1, k2 = jax.random.split(key)
    lp, grad = log_p(y), value_grad(y)[1]
    prop = y + 0.5 * e**2 * grad + e * jax.random.normal(k1, y.shape)
    lp_prop, grad_prop = log_p(prop), value_grad(prop)[1]

    def log_q(to, frm, g):  # log density of proposing `to` from `frm`
        d = (to - frm - 0.5 * e**2 * g).reshape(len(y), -1)
        return -jnp.sum(d**2, axis=-1) / (2 * eps**2)

    log_alpha = lp_prop - lp + log_q(y, prop, grad_prop) - log_q(prop, y, grad)
    accept = jnp.log(jax.random.uniform(k2, lp.shape)) < log_alpha
    keep = accept.reshape((-1,) + (1,) * (y.ndim - 1))
    return jnp.where(keep, prop, y), accept.astype(jnp.float32)


def ais_log_z(
    log_target: LogDensity,
    base_mean: Float[Array, " B *D"],
    base_std: Float[Array, " B"],
    num_temperatures: int,
    step_size: Float[Array, " B"],
    key: PRNGKeyArray,
    mala_steps: int = 1,
) -> tuple[Float[Array, " B"], Float[Array, ""]]:
    """One AIS chain per row: log-weights whose exp estimates Z of each row's target.

    Arguments:
        log_target: unnormalized log pi_1, per row.
        base_mean, base_std: the normalized Gaussian q0 of each row.
        num_temperatures: K, with beta_k = (k / K)^4 (more steps near the base, where the
            density changes fastest for a sharp target).
        step_size: MALA step of each row.
        key: randomness.
        mala_steps: kernel applications per temperature.

    Returns:
        Per-row log-weights (log-mean-exp over rows of the same target gives log Z) and the
        mean MALA acceptance rate.
    """
    betas = (jnp.arange(num_temperatures + 1) / num_temperatures) ** 4
    k0, key = jax.random.split(key)
    y = base_mean + base_std.reshape((-1,) + (1,) * (base_mean.ndim - 1)) * jax.random.normal(
        k0, base_mean.shape
    )

    def gap(v):
        return log_target(v) - gaussian_log_density(v, base_mean, base_std)

    def step(carry, inputs):
        y, log_w, acc = carry
        b_prev, b, k = inputs
        log_w = log_w + (b - b_prev) * gap(y)

        def log_p(v):
            return (1 - b) * gaussian_log_density(v, base_mean, base_std) + b * log_target(v)

        for j in range(mala_steps):
            y, a = _mala_step(log_p, y, step_size, jax.random.fold_in(k, j))
            acc = acc + jnp.mean(a)
        return (y, log_w, acc), None

    keys = jax.random.split(key, num_temperatures)
    init = (y, jnp.zeros(len(y)), jnp.zeros(()))
    (y, log_w, acc), _ = jax.lax.scan(step, init, (betas[:-1], betas[1:], keys))
    return log_w, acc / (num_temperatures * mala_steps)


def log_mean_exp(log_w: Float[Array, " M"]) -> tuple[Array, Array]:
    """log of the mean of exp(log_w) and its standard error (delta method)."""
    m = jnp.max(log_w)
    w = jnp.exp(log_w - m)
    mean = jnp.mean(w)
    se = jnp.std(w, ddof=1) / jnp.sqrt(len(w))
    return m + jnp.log(mean), se / mean
