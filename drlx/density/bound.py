"""The variational bound on log p(x_0) over the diffusion path (docs/method.md §7.4).

The model is p(x_{T-1}) prod_{t<T-1} p(x_t | x_{t+1}), the forward process
q(x_{t+1} | x_t) = N(a_{t+1} x_t, sigma_{t+1}^2 I), and
    log p(x_0) >= E_q[ log p(x_{T-1}) + sum_{t<T-1} (log p(x_t | x_{t+1}) - log q(x_{t+1} | x_t)) ].
The EBM of level t is a density in y = a_{t+1} x_t, so in x_t
    log p(x_t | x_{t+1}) = log p(y | x~) + D log a_{t+1}   (Jacobian of y = a x_t),
with log p(y | x~) = f_t(y) - ||y - x~||^2 / (2 sigma_{t+1}^2) - log Z_t(x~) and log Z_t by AIS;
the top level is log p(x_{T-1}) = f_{T-1}(x_{T-1}) - log Z_top. Each held-out x_0 gets one path
x_1 .. x_{T-1} from q; its value is an unbiased estimate of its bound (up to the AIS error), and
the mean over examples estimates the expected bound.

Where the data's density q is known (2D toys), the same path also gives the true process's
terms, log q_t(x_t) - log q_{t+1}(x_{t+1}) below the top and log q_{T-1}(x_{T-1}) at it (they
sum to log q(x_0)). True minus model at level t is log q(x_t | x_{t+1}) - log p(x_t | x_{t+1}),
whose mean is that level's expected KL divergence: the held-out gap, level by level.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.density.ais import AISSettings, gaussian_log_density, log_mean_exp
from drlx.density.levels import TopBase, conditional_log_z
from drlx.energy import ConditionalEBM
from drlx.keys import example_keys, named_key, per_example_normal

PIXEL_STEP = 1.0 / 127.5  # one 8-bit grey level in model space (x / 127.5 - 1)


class BoundResult(NamedTuple):
    """The bound per example and its parts (numpy arrays; nats).

    Attributes:
        per_example: (N,) estimate of the bound on log p(x_0) of each example.
        terms: (N, T) each level's part: log p(x_t | x_{t+1}) - log q(x_{t+1} | x_t) for
            t < T-1, log p(x_{T-1}) at t = T-1; they sum to per_example.
        log_z: (N, T-1) AIS log Z_t(x_{t+1}) of the tethered levels; log_z_se their errors.
        acceptance: (N, T-1) MALA acceptance of those AIS runs.
        top_log_z, top_log_z_se, top_acceptance: the top level's (one number each).
        reference_terms: (N, T) the true process's level terms on the same paths, when the
            data's density was given (else None); reference_terms - terms estimates each
            level's KL divergence from the truth.
    """

    per_example: np.ndarray
    terms: np.ndarray
    log_z: np.ndarray
    log_z_se: np.ndarray
    acceptance: np.ndarray
    top_log_z: float
    top_log_z_se: float
    top_acceptance: float
    reference_terms: np.ndarray | None = None

    def mean_and_se(self) -> tuple[float, float]:
        """Mean bound over examples and its standard error: the spread over examples (which
        holds the per-example AIS noise) and the top level's AIS error, shared by all."""
        n = len(self.per_example)
        var = np.var(self.per_example, ddof=1) / n if n > 1 else 0.0
        return float(np.mean(self.per_example)), float(np.sqrt(var + self.top_log_z_se**2))


def forward_path(ebm: ConditionalEBM, x0: Array, key: PRNGKeyArray) -> Array:
    """x_0 .. x_{T-1} from q: x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps_t, eps_t from
    fold_in(fold_in(key, i), t) for example i. Returns (T, N, *D)."""
    keys = example_keys(key, len(x0))
    path = [x0]
    for t in range(ebm.schedule.num_levels - 1):
        eps = per_example_normal(keys, t, x0)
        path.append(ebm.schedule.a[t + 1] * path[-1] + ebm.schedule.sigma[t + 1] * eps)
    return jnp.stack(path)


def path_marginals(ebm: ConditionalEBM) -> tuple[np.ndarray, np.ndarray]:
    """Scale and noise std of x_t given x_0 along `forward_path`, t = 0 .. T-1 (float64):
    x_t = scale_t x_0 + std_t eps, from x_0 itself (scale 1, std 0)."""
    a, sigma = (np.asarray(v, np.float64) for v in (ebm.schedule.a, ebm.schedule.sigma))
    scale, std = [1.0], [0.0]
    for t in range(ebm.schedule.num_levels - 1):
        scale.append(a[t + 1] * scale[-1])
        std.append(float(np.hypot(a[t + 1] * std[-1], sigma[t + 1])))
    return np.array(scale), np.array(std)


LogDensity = Callable[[np.ndarray, float, float], np.ndarray]  # (x, scale, noise_std) -> log q


def reference_terms(ebm: ConditionalEBM, path: Array, log_density: LogDensity) -> np.ndarray:
    """(N, T) level terms of the true process on `path` (see the module docstring), from
    `log_density(x, scale, noise_std)`, the log-density of scale x_0 + noise_std eps."""
    scale, std = path_marginals(ebm)
    flat = np.asarray(path, np.float64).reshape(len(scale), path.shape[1], -1)
    log_q = np.stack([log_density(flat[t], scale[t], std[t]) for t in range(len(scale))])
    return np.concatenate([log_q[:-1] - log_q[1:], log_q[-1:]]).T


@eqx.filter_jit
def _terms(ebm: ConditionalEBM, path: Array, log_z: Array, top_log_z: Array) -> Array:
    """(N, T) level terms of the bound, given the AIS log Z's (see the module docstring)."""
    sched, num = ebm.schedule, ebm.schedule.num_levels
    n, dim = path.shape[1], path[0, 0].size
    terms = []
    for t in range(num - 1):
        x_t, x_next = path[t], path[t + 1]
        level = jnp.full((n,), t, jnp.int32)
        a, sigma = sched.a[t + 1], sched.sigma[t + 1]
        log_p = ebm.log_prob(a * x_t, x_next, level) - log_z[:, t] + dim * jnp.log(a)
        log_q = gaussian_log_density(x_next, a * x_t, jnp.full((n,), sigma))
        terms.append(log_p - log_q)
    top = jnp.full((n,), num - 1, jnp.int32)
    terms.append(ebm.log_prob(path[-1], path[-1], top) - top_log_z)
    return jnp.stack(terms, axis=1)


def path_bound(
    ebm: ConditionalEBM,
    x0: Float[Array, " N *D"],
    key: PRNGKeyArray,
    settings: AISSettings,
    top: TopBase,
    top_chains: int,
    chunk: int,
    mesh: Mesh | None = None,
    progress: bool = False,
    log_density: LogDensity | None = None,
) -> BoundResult:
    """Estimate the bound on log p(x_0) of each example (nats).

    Arguments:
        ebm: the conditional EBMs.
        x0: held-out data in model space (images: dequantized, see `dequantize`).
        key: randomness of the paths ("path") and of AIS ("ais"); example i's depends on i only.
        settings: AIS settings of the tethered levels.
        top: the top level's AIS base.
        top_chains: chains for the top level's single log Z (shared by every example): run as
            top_chains / num_chains problems of settings.num_chains chains, pooled.
        chunk: AIS problems per jitted call (a multiple of the device count).
        mesh: devices to split AIS problems over.
        progress: show a progress bar.
        log_density: the data's true log-density, diffused: (x, scale, noise_std) -> log q of
            scale x_0 + noise_std eps (2D toys); given, the result holds the true process's
            level terms on the same paths.

    Returns:
        BoundResult.
    """
    num = ebm.schedule.num_levels
    n = len(x0)
    path = forward_path(ebm, jnp.asarray(x0), named_key(key, "path"))
    ais_key = named_key(key, "ais")
    # problem (i, t): x~ = x_{t+1} of example i at level t, randomness fold_in(ais_key, i T + t)
    x_tilde = np.asarray(path[1:]).swapaxes(0, 1).reshape(n * (num - 1), *x0.shape[1:])
    levels = np.tile(np.arange(num - 1), n)
    ids = np.arange(n)[:, None] * num + np.arange(num - 1)[None]
    res = conditional_log_z(
        ebm, x_tilde, levels, ais_key, settings, top, chunk, ids.reshape(-1), mesh, progress
    )
    # the top level: one constant, estimated from the pooled chains of several problems
    reps = max(1, top_chains // settings.num_chains)
    top_res = conditional_log_z(  # same chunk shape as above: no new compilation
        ebm, np.zeros((reps, *x0.shape[1:]), np.float32), np.full(reps, num - 1), ais_key,
        settings, top, chunk, n * num + np.arange(reps), mesh,
    )  # fmt: skip
    top_log_z, top_se = (float(v) for v in log_mean_exp(jnp.asarray(top_res.log_w.ravel())))
    log_z = res.log_z.reshape(n, num - 1)
    terms = np.asarray(_terms(ebm, path, jnp.asarray(log_z), jnp.asarray(top_log_z)))
    return BoundResult(
        per_example=terms.sum(axis=1),
        terms=terms,
        log_z=log_z,
        log_z_se=res.log_z_se.reshape(n, num - 1),
        acceptance=res.acceptance.reshape(n, num - 1),
        top_log_z=top_log_z,
        top_log_z_se=top_se,
        top_acceptance=float(np.mean(top_res.acceptance)),
        reference_terms=None if log_density is None else reference_terms(ebm, path, log_density),
    )


def dequantize(x: Float[np.ndarray, " N *D"], seed: int) -> np.ndarray:
    """Uniform dequantization of 8-bit images in model space: z = x + (u - 1/2) / 127.5.

    The held-out pixels are k / 127.5 - 1 for integers k in 0..255 (drlx.data.images.
    to_model_space), so z is uniform on the pixel's bin of width 1/127.5, and
    log P(k) >= E_u[log p(z)] + D log(1/127.5) (Jensen) bounds the discrete likelihood.

    Arguments:
        x: images in model space, on the 8-bit grid.
        seed: seed of the uniform noise.

    Returns:
        float32 dequantized images.

    Raises:
        ValueError: when x is not on the 8-bit grid (the discretization would be wrong).
    """
    x = np.asarray(x, np.float64)
    levels = (x + 1.0) * 127.5
    off = float(np.max(np.abs(levels - np.rint(levels)), initial=0.0))
    if off > 1e-3 or levels.min() < -1e-3 or levels.max() > 255 + 1e-3:
        raise ValueError(
            "held-out images are not 8-bit pixels k / 127.5 - 1 (k = 0..255): off the grid by "
            f"up to {off:.3g} levels, range [{levels.min():.3g}, {levels.max():.3g}]"
        )
    u = np.random.default_rng(seed).random(x.shape)
    return (np.rint(levels) / 127.5 - 1.0 + (u - 0.5) * PIXEL_STEP).astype(np.float32)


def bits_per_dim(log_p: np.ndarray, dim: int) -> np.ndarray:
    """Bits per dimension of 8-bit data from a bound on the log-density of its dequantized
    model-space values: (D log 127.5 - log p) / (D ln 2), an upper bound on the discrete NLL."""
    return (dim * np.log(127.5) - np.asarray(log_p, np.float64)) / (dim * np.log(2.0))
