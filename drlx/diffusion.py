"""Noise schedules and the forward process (docs/method.md §2).

Arrays of a schedule have length T+1 (index i = 0..T); conditional EBMs are indexed by level
t = 0..T-1 and use entry t+1 for the step from x_t to x_{t+1}:
    x_t = abar_t x + sigmabar_t eps,        x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps'.
Schedules are computed in float64 numpy and stored as float32 arrays.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.keys import per_example_normal


class Schedule(eqx.Module):
    """Per-level contraction a_i, noise sigma_i and their cumulative abar_i, sigmabar_i.

    `a_out[i]` rescales x_{i-1} into the EBM variable y = a_out[i] x_{i-1} of level i-1; it is a_i
    except at the top (i = T), where the EBM is unconditional and y = x_{T-1}. `tethered[i]` is 0
    at the top level, where the Gaussian tether term is dropped (docs/method.md §3.3).
    """

    a: Float[Array, " T1"]
    sigma: Float[Array, " T1"]
    abar: Float[Array, " T1"]
    sigmabar: Float[Array, " T1"]
    a_out: Float[Array, " T1"]
    tethered: Float[Array, " T1"]

    @property
    def num_levels(self) -> int:
        """T, the number of conditional EBMs."""
        return self.a.shape[0] - 1

    def narrowest_conditional_variance(self, spread: float = 0.0) -> np.ndarray:
        """V*_t, the smallest variance (per coordinate, in the EBM's variable y) that level t's
        target can have when the data have local spread `spread` (std of their thinnest
        direction; 0 for data on a manifold): the target of data concentrated at one point,
        exp(f(y) - |x_{t+1} - y|^2 / (2 sigma_{t+1}^2)) with y's marginal N(., w_t) and
        w_t = a_out[t+1]^2 (sigmabar_t^2 + abar_t^2 spread^2), so
        V*_t = 1 / (1 / sigma_{t+1}^2 + 1 / w_t) below the top and V*_{T-1} = w_{T-1} there
        (no tether). Float64 numpy, length T (docs/method.md §4.1b)."""
        f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
        sigma2, a_out = f64(self.sigma[1:]) ** 2, f64(self.a_out[1:])
        # y = a_out x_t = a_out abar_t x_0 + a_out sigmabar_t eps
        w = (a_out * f64(self.sigmabar[:-1])) ** 2 + (a_out * f64(self.abar[:-1]) * spread) ** 2
        tethered = np.asarray(self.tethered[1:]) > 0
        return np.where(tethered, 1.0 / (1.0 / sigma2 + 1.0 / w), w)

    def step_size_sq(self, b2: float, rule: str = "drl", spread: float = 0.0) -> Float[Array, " T"]:
        """Langevin step sizes s_t^2 = b^2 c_t^2 sigma_{t+1}^2 with DRL's c_t^2 = sigmabar_t /
        sigmabar_0 (rule "drl") or c_t^2 = 1 (rule "tether"); rule "conditional": s_t^2 = b^2 V*_t,
        a fraction of the narrowest target the level can have (`narrowest_conditional_variance`
        with the data's `spread`), so b^2 < 1 is safe on every schedule."""
        if rule == "conditional":
            return jnp.asarray(b2 * self.narrowest_conditional_variance(spread), jnp.float32)
        c2 = self.sigmabar[:-1] / self.sigmabar[0] if rule == "drl" else 1.0
        return b2 * c2 * self.sigma[1:] ** 2


def _from_contractions(a: np.ndarray) -> Schedule:
    a = np.asarray(a, dtype=np.float64)
    abar = np.cumprod(a)
    a_out = a.copy()
    a_out[-1] = 1.0
    tethered = np.ones_like(a)
    tethered[-1] = 0.0
    f32 = lambda v: jnp.asarray(v, dtype=jnp.float32)  # noqa: E731
    return Schedule(
        a=f32(a),
        sigma=f32(np.sqrt(1.0 - a**2)),
        abar=f32(abar),
        sigmabar=f32(np.sqrt(1.0 - abar**2)),
        a_out=f32(a_out),
        tethered=f32(tethered),
    )


def _group_betas(betas: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a_0 = prod sqrt(1-beta_k) for k <= idx_0; a_i = prod over k in (idx_{i-1}, idx_i]."""
    sqrt_alpha = np.sqrt(1.0 - betas)
    bounds = np.concatenate([[-1], idx])
    return np.array(
        [
            np.prod(sqrt_alpha[lo + 1 : hi + 1])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    )


def drl_linear_schedule(
    num_levels: int, beta_start: float, beta_end: float, num_diffusion_steps: int
) -> Schedule:
    """DRL's schedule as the official code builds it: idx = i * (N // ((T-1)*2)) for i < T, N-1."""
    betas = np.linspace(beta_start, beta_end, num_diffusion_steps, dtype=np.float64)
    stride = num_diffusion_steps // ((num_levels - 1) * 2)
    idx = np.concatenate([np.arange(num_levels) * stride, [num_diffusion_steps - 1]])
    return _from_contractions(_group_betas(betas, idx))


def linear_schedule(
    num_levels: int, beta_start: float, beta_end: float, num_diffusion_steps: int
) -> Schedule:
    """T-general linear-beta schedule: idx_0 = 0, idx_i = round(i (N-1) / T); T = N-1 gives one
    DDPM step per level (the paper's T1k is num_levels 1000 with num_diffusion_steps 1001)."""
    betas = np.linspace(beta_start, beta_end, num_diffusion_steps, dtype=np.float64)
    idx = np.round(np.arange(num_levels + 1) * (num_diffusion_steps - 1) / num_levels).astype(int)
    return _from_contractions(_group_betas(betas, idx))


def cosine_logsnr_schedule(num_levels: int, logsnr_min: float, logsnr_max: float) -> Schedule:
    """CDRL: logSNR(u) = -2 log tan(a u + b), u = i/T, abar^2 = sigmoid(logSNR)."""
    b = np.arctan(np.exp(-logsnr_max / 2.0))
    a = np.arctan(np.exp(-logsnr_min / 2.0)) - b
    u = np.arange(num_levels + 1, dtype=np.float64) / num_levels
    logsnr = -2.0 * np.log(np.tan(a * u + b))
    abar = np.sqrt(1.0 / (1.0 + np.exp(-logsnr)))
    return _from_contractions(np.concatenate([abar[:1], abar[1:] / abar[:-1]]))


def continuous_time(schedule: Schedule) -> Float[Array, " T1"]:
    """CDRL's level input: 1000 arctan(exp(-logSNR_i / 2)) / (pi / 2) of every entry i, with
    logSNR_i = log(abar_i^2 / sigmabar_i^2), i.e. 1000 arctan(sigmabar_i / abar_i) / (pi / 2):
    0 for clean data, 1000 for pure noise (docs/method.md §11)."""
    abar = np.asarray(schedule.abar, np.float64)
    sigmabar = np.asarray(schedule.sigmabar, np.float64)
    return jnp.asarray(1000.0 * np.arctan2(sigmabar, abar) / (np.pi / 2), jnp.float32)


def q_sample_pair(
    schedule: Schedule,
    x0: Float[Array, " N *D"],
    t: Int[Array, " N"],
    keys: PRNGKeyArray,
    shared_noise: bool,
) -> tuple[Float[Array, " N *D"], Float[Array, " N *D"]]:
    """Draw (x_t, x_{t+1}) from data x0 at per-example levels t.

    Arguments:
        schedule: the noise schedule.
        x0: a batch of data.
        t: level of each example, in 0..T-1.
        keys: one key per example (drlx.keys.example_keys).
        shared_noise: CDRL's variance reduction (both from x0 with the same eps) when True;
            otherwise DRL's Markov step x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps'.

    Returns:
        x_t and x_{t+1}, each shaped like x0.
    """

    def rows(v):
        return broadcast_to_example(v, x0)

    eps = per_example_normal(keys, 0, x0)
    x_t = rows(schedule.abar[t]) * x0 + rows(schedule.sigmabar[t]) * eps
    if shared_noise:
        x_next = rows(schedule.abar[t + 1]) * x0 + rows(schedule.sigmabar[t + 1]) * eps
    else:
        eps2 = per_example_normal(keys, 1, x0)
        x_next = rows(schedule.a[t + 1]) * x_t + rows(schedule.sigma[t + 1]) * eps2
    return x_t, x_next
