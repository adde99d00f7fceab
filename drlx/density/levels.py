"""log Z(x~) of the conditional EBMs by AIS, for many (x~, level) pairs: chunked, jitted, sharded.

Level t < T-1 is tethered: its unnormalized density in y = a_{t+1} x_t is
exp(f(y) - ||y - x~||^2 / (2 sigma_{t+1}^2)), and AIS starts from the tether N(x~, sigma_{t+1}^2 I).
The top level t = T-1 is unconditional (x~ is ignored) and starts from a Gaussian of its own,
`top_level_base`, fitted to the marginal of x_{T-1}.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.density.ais import AISResult, AISSettings, annealed_importance_sampling
from drlx.diffusion import Schedule
from drlx.energy import ConditionalEBM
from drlx.progress import progress_bar
from drlx.sharding import check_divisible, replicate, shard_batch


class TopBase(NamedTuple):
    """The top level's AIS base N(mean, std^2 I)."""

    mean: Float[Array, " *D"]
    std: Float[Array, ""]


def top_level_base(schedule: Schedule, data: Float[Array, " N *D"]) -> TopBase:
    """N(abar m, (abar^2 v + sigmabar^2) I) at level T-1, with m the data mean (per dimension)
    and v the data variance averaged over dimensions: the moments of x_{T-1} = abar x + sigmabar
    eps, isotropic.

    Arguments:
        schedule: the noise schedule.
        data: data x (e.g. the training set) in model space.

    Returns:
        The base's mean (shaped like one example) and scalar std.
    """
    top = schedule.num_levels - 1
    abar, sigmabar = float(schedule.abar[top]), float(schedule.sigmabar[top])
    data = np.asarray(data, np.float64)
    std = np.sqrt(abar**2 * np.mean(np.var(data, axis=0)) + sigmabar**2)
    return TopBase(jnp.asarray(abar * data.mean(0), jnp.float32), jnp.asarray(std, jnp.float32))


def level_base(
    ebm: ConditionalEBM, x_tilde: Float[Array, " N *D"], t: Int[Array, " N"], top: TopBase
) -> tuple[Float[Array, " N *D"], Float[Array, " N"]]:
    """AIS base of each (x~, t): the tether N(x~, sigma_{t+1}^2 I), or `top` at the top level."""
    tethered = ebm.schedule.tethered[t + 1] > 0
    mean = jnp.where(tethered.reshape((-1,) + (1,) * (x_tilde.ndim - 1)), x_tilde, top.mean)
    return mean, jnp.where(tethered, ebm.schedule.sigma[t + 1], top.std)


@eqx.filter_jit
def _chunk(ebm, x_tilde, t, ids, key, top, settings: AISSettings) -> AISResult:
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids)
    mean, std = level_base(ebm, x_tilde, t, top)
    c = settings.num_chains
    target = ebm.target(jnp.repeat(x_tilde, c, axis=0), jnp.repeat(t, c))
    return annealed_importance_sampling(target, mean, std, keys, settings)


def conditional_log_z(
    ebm: ConditionalEBM,
    x_tilde: Float[Array, " N *D"],
    t: Int[Array, " N"],
    key: PRNGKeyArray,
    settings: AISSettings,
    top: TopBase,
    chunk: int,
    ids: Int[Array, " N"] | None = None,
    mesh: Mesh | None = None,
    progress: bool = False,
) -> AISResult:
    """AIS estimates of log Z(x~) = log of the integral of exp(log p(y | x~, t)) over y.

    Arguments:
        ebm: the conditional EBMs.
        x_tilde: tethers x~ = x_{t+1} (ignored at the top level).
        t: level of each problem, 0..T-1.
        key: the AIS key; problem i uses fold_in(key, ids[i]) for all its randomness.
        settings: chains, temperatures, kernel steps, target acceptance.
        top: the top level's base (`top_level_base`).
        chunk: problems per jitted call (a multiple of the device count; the last call is padded
            and trimmed).
        ids: a distinct integer per problem (default 0..N-1).
        mesh: devices to split each chunk's problems over (None: the default device).
        progress: show a progress bar.

    Returns:
        AISResult as numpy arrays, one row per problem.
    """
    n = len(x_tilde)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if mesh is not None:
        check_divisible(chunk, mesh, "the AIS chunk")
        ebm, top = replicate(ebm, mesh), replicate(top, mesh)
    x_tilde, t = np.asarray(x_tilde, np.float32), np.asarray(t, np.int32)
    pad = -n % chunk
    padded = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in (x_tilde, t, ids)]
    out = []
    bar = progress_bar(n, "AIS", "problem", progress)
    for start in range(0, n, chunk):
        parts = [jnp.asarray(a[start : start + chunk]) for a in padded]
        if mesh is not None:
            parts = [shard_batch(a, mesh) for a in parts]
        out.append(jax.tree.map(np.asarray, _chunk(ebm, *parts, key, top, settings)))
        bar.update(min(chunk, n - start))
    bar.close()
    return AISResult(*(np.concatenate(parts)[:n] for parts in zip(*out, strict=True)))


def chunk_size(budget: int, chains: int, devices: int) -> int:
    """AIS problems per jitted call: about `budget` chains at once, a multiple of the device
    count (at least one problem per device)."""
    return max(1, budget // chains // devices) * devices
