"""Long-run chains: do the conditional chains stay on the data (docs/method.md §7.6)?

Generation runs each level's chain for K steps. Here the chain that produced x_t is continued far
beyond K: tether x~ fixed at the generated x_{t+1}, start y = a_{t+1} x_t (the state generation
reached), the experiment's evaluation sampler, for long_run_steps more steps. Steps are counted
from the chain's start at y = x~, so records sit at K, K + thin, ..., K + long_run_steps (the
horizons of the spec are steps beyond K). Every `thin` steps a thinned trace is recorded
(full states are kept only at the few quality horizons): the unnormalized log p(y | x~) of every
chain and, over chains, the per-dimension mean, std, min and max of x_t = y / a_{t+1}. At each
horizon the chains' x_t are scored with `sample_quality` against held-out data (level 0) or
held-out data pushed to level t by the forward diffusion, x_t = abar_t x + sigmabar_t eps.

Verdict per level (RULE): "diverged" if any chain state is not finite at the end; "drifts" if
the SWD ratio (to its held-out floor) at the end over the ratio at K exceeds the threshold;
otherwise "stays". The experiment's verdict is the worst over the levels run.
"""

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.energy import ConditionalEBM
from drlx.evaluate.toy import sample_quality
from drlx.keys import example_keys, fold_each, named_key, per_example_normal
from drlx.progress import progress_bar
from drlx.samplers.base import AbstractSampler
from drlx.samplers.progressive import generate
from drlx.settings import LongRunSettings

RULE = (
    "per level: diverged if any chain state is not finite at the last horizon; drifts if "
    "SWD ratio (to the held-out floor) at the last horizon / SWD ratio at K > {threshold}; "
    "else stays. Overall: the worst level (stays < drifts < diverged)."
)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_ORDER = ("stays", "drifts", "diverged")


def record_steps(start: int, end: int, thin: int) -> np.ndarray:
    """Step counts of the trace: start, start + thin, ..., end.

    Arguments:
        start: steps already taken by the starting states (K for generated samples).
        end: the last step; end - start must be a positive multiple of thin.
        thin: steps between records.
    """
    if (end - start) % thin or end <= start:
        raise ValueError(f"end ({end}) must be start ({start}) plus a positive multiple of {thin}")
    return np.arange(start, end + 1, thin, dtype=np.int64)


def _summary(ebm, y, tether, t, groups: int) -> dict[str, Array]:
    """Per-group record: log p of each chain and per-dimension statistics of x_t over chains."""
    log_p = ebm.log_prob(y, tether, t).reshape(groups, -1)
    x = y / broadcast_to_example(ebm.schedule.a_out[t + 1], y)
    x = x.reshape(groups, y.shape[0] // groups, -1)
    return {
        "log_prob": log_p,
        "mean": x.mean(1),
        "std": x.std(1),
        "min": x.min(1),
        "max": x.max(1),
        "nonfinite": jnp.sum(~jnp.all(jnp.isfinite(x), axis=-1), axis=1),
    }


@eqx.filter_jit
def _advance(ebm, sampler, y, tether, t, keys, trace, lo, hi, groups: int):
    """Records lo .. hi-1 from y, the state of record lo-1 (written again, so that the first
    call also records the start): segment j runs `sampler` from record j-1 with keys
    fold_in(key_i, j). lo and hi are arrays, so every call shares one compiled loop."""
    target = ebm.target(tether, t)
    step_sq = ebm.step_sq[t]

    def write(trace, j, y):
        rec = _summary(ebm, y, tether, t, groups)
        return jax.tree.map(lambda b, r: b.at[j].set(r), trace, rec)

    def segment(j, carry):
        y, trace = carry
        y = sampler(target, y, step_sq, fold_each(keys, j))
        return y, write(trace, j, y)

    return jax.lax.fori_loop(lo, hi, segment, (y, write(trace, lo - 1, y)))


def run_long_chains(
    ebm: ConditionalEBM,
    sampler,
    tether: Float[Array, " C *D"],
    y0: Float[Array, " C *D"],
    t: Int[Array, " C"],
    keys: PRNGKeyArray,
    start: int,
    horizons: Sequence[int],
    thin: int,
    groups: int = 1,
    progress: bool = False,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Continue C chains of fixed tether from y0 and record a thinned trace.

    Arguments:
        ebm: the conditional EBMs.
        sampler: a sampler with a static `num_steps` field, called as
            sampler(target, y, step_sq, keys) (ULA, or any kind with the same interface;
            one with auxiliary state, such as momentum, restarts it every `thin` steps).
        tether: x~ of each chain.
        y0: starting states, already `start` steps into the chain.
        t: level of each chain.
        keys: one key per chain; segment j (record j-1 to j) uses fold_in(key, j).
        start: steps already taken by y0 (labels only).
        horizons: step counts at which the full states are returned, each start plus a
            multiple of thin; the largest is the end of the run.
        thin: steps between records.
        groups: chains are `groups` equal consecutive blocks (e.g. levels), summarised apart.
        progress: show a progress bar (chain steps).

    Returns:
        The states y at each horizon (host arrays, in sorted horizon order), and the trace:
        step (R,), log_prob (R, G, C/G), mean, std, min, max of x_t = y / a_{t+1} over the
        chains of a group (R, G, D), nonfinite (R, G): chains with a non-finite coordinate.
    """
    horizons = sorted(set(int(h) for h in horizons))
    steps = record_steps(start, horizons[-1], thin)
    off_grid = [h for h in horizons if (h - start) % thin or h < start]
    if off_grid:
        raise ValueError(f"horizons {off_grid} are not on the record grid {start} + k*{thin}")
    if len(y0) % groups:
        raise ValueError(f"{len(y0)} chains do not split into {groups} equal groups")
    num, dim, per = len(steps), math.prod(y0.shape[1:]), len(y0) // groups
    f32 = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    trace = {
        "log_prob": f32(num, groups, per),
        **{name: f32(num, groups, dim) for name in ("mean", "std", "min", "max")},
        "nonfinite": jnp.zeros((num, groups), jnp.int32),
    }
    regular = dataclasses.replace(sampler, num_steps=thin)
    bar = progress_bar(int(steps[-1] - start) * len(y0), "long run", "step", progress)
    y, done, states = y0, 0, []
    for h in horizons:
        target = (h - start) // thin
        bounds = jnp.asarray(done + 1, jnp.int32), jnp.asarray(target + 1, jnp.int32)
        y, trace = _advance(ebm, regular, y, tether, t, keys, trace, *bounds, groups)
        done = target
        bar.update((h - start) * len(y0) - bar.n)
        states.append(np.asarray(y))
    bar.close()
    return states, {"step": steps, **{k: np.asarray(v) for k, v in trace.items()}}


def drift_verdict(ratio_start: float, ratio_end: float, nonfinite: int, threshold: float) -> str:
    """One level's verdict by RULE: "diverged", "drifts" or "stays"."""
    if nonfinite > 0 or not (np.isfinite(ratio_end) and np.isfinite(ratio_start)):
        return "diverged"
    return "drifts" if ratio_end / ratio_start > threshold else "stays"


def check_levels(levels: Sequence[int], num_levels: int) -> list[int]:
    """The levels to run long, sorted; each must be one of 0 .. T-1."""
    bad = [t for t in levels if not 0 <= t < num_levels]
    if bad:
        raise ValueError(
            f"density.long_run_levels: levels {bad} do not exist (0 .. {num_levels - 1})"
        )
    return sorted(set(levels))


@eqx.filter_jit
def _generate(ebm, sampler, key, index, shape):
    """Generation as in sample_many: sample i uses fold_in(key, i), so with the sample stage's
    key these are exactly its first samples. Returns x_T and the stack x_{T-1} .. x_0."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    x_top = per_example_normal(keys, ebm.schedule.num_levels, jnp.zeros((len(index), *shape)))
    return x_top, generate(ebm, sampler, x_top, keys)[1]


def noised_reference(
    ebm: ConditionalEBM, data: np.ndarray, level: int, key: PRNGKeyArray
) -> np.ndarray:
    """Held-out data pushed to level t by the forward process: abar_t x + sigmabar_t eps
    (level 0 returns the data itself, as the evaluate stage compares x_0 with it)."""
    if level == 0:
        return np.asarray(data)
    x = jnp.asarray(data, jnp.float32)
    eps = per_example_normal(example_keys(key, len(x)), level, x)
    s = ebm.schedule
    return np.asarray(s.abar[level] * x + s.sigmabar[level] * eps)


def _clean(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def long_run(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    settings: LongRunSettings,
    shape: tuple[int, ...],
    key: PRNGKeyArray,
    heldout: np.ndarray,
    heldout_b: np.ndarray,
    progress: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Generate samples, continue each chosen level's chain for settings.steps more.

    Arguments:
        ebm: the conditional EBMs (EMA weights).
        sampler: the evaluation sampler (generation's chain, continued).
        settings: chains, levels, length, thinning, horizons, drift threshold.
        shape: the shape of one example.
        key: the sampling key; pass the sample stage's key to continue exactly its first
            `settings.chains` samples.
        heldout: held-out data (N, *shape), the reference of sample_quality.
        heldout_b: a second held-out draw, for the floor.
        progress: show a progress bar.

    Returns:
        metrics: JSON-ready (the rule, settings, per-level quality at each horizon, drift,
            verdicts); traces: arrays for long_run_figure and an .npz (see run_long_chains,
            plus horizon, level, log_prob_mean, log_prob_quantiles, swd_ratio (H, L),
            mmd2 (H, L), samples (H, L, N, *shape), reference (L, N, *shape)).
    """
    k, end, n = sampler.num_steps, settings.steps, settings.chains
    num_levels = ebm.schedule.num_levels
    levels = check_levels(settings.levels, num_levels)
    horizons = [k, *(k + h for h in sorted(set(settings.horizons))), k + end]

    # start: x_{t+1} (tether) and x_t of the generated samples; stack[i] = x_{T-1-i}
    x_top, stack = _generate(ebm, sampler, key, jnp.arange(n), shape)
    xs = [stack[num_levels - 1 - t] for t in range(num_levels)] + [x_top]
    t = jnp.repeat(jnp.asarray(levels, jnp.int32), n)
    tether = jnp.concatenate([xs[lv + 1] for lv in levels])
    x_start = jnp.concatenate([xs[lv] for lv in levels])
    y0 = x_start * broadcast_to_example(ebm.schedule.a_out[t + 1], x_start)
    run_key = named_key(key, "long_run")
    keys = jnp.concatenate([example_keys(jax.random.fold_in(run_key, lv), n) for lv in levels])
    states, trace = run_long_chains(
        ebm, sampler, tether, y0, t, keys, k, horizons, settings.thin, len(levels), progress
    )

    a_out = np.asarray(ebm.schedule.a_out)
    ref_key = named_key(key, "long_run_reference")
    metrics: dict = {
        "rule": RULE.format(threshold=settings.drift_ratio),
        "generation_steps": k,
        "steps": end,
        "chains": n,
        "thin": settings.thin,
        "levels": levels,
        "horizons": horizons,
    }
    swd = np.full((len(horizons), len(levels)), np.nan)
    mmd = np.full_like(swd, np.nan)
    samples = np.stack([s.reshape(len(levels), n, *shape) for s in states])
    samples = samples / a_out[np.asarray(levels) + 1].reshape(1, -1, *[1] * (1 + len(shape)))
    references = []
    row_of = {int(s): i for i, s in enumerate(trace["step"])}
    for j, lv in enumerate(levels):
        ref = noised_reference(ebm, heldout, lv, jax.random.fold_in(ref_key, 0))
        ref_b = noised_reference(ebm, heldout_b, lv, jax.random.fold_in(ref_key, 1))
        references.append(ref[:n])
        per: dict = {}
        for i, h in enumerate(horizons):
            x = samples[i, j]
            if np.all(np.isfinite(x)):
                q = sample_quality(x, ref, ref_b, settings.num_projections)
                swd[i, j], mmd[i, j] = q["sliced_wasserstein_ratio"], q["mmd2"]
                per.setdefault("sliced_wasserstein_floor", q["sliced_wasserstein_floor"])
                per.setdefault("mmd2_floor", q["mmd2_floor"])
            r = row_of[h]
            per[f"at_{h}"] = {
                "swd_ratio": _clean(swd[i, j]),
                "mmd2": _clean(mmd[i, j]),
                "log_prob_mean": _clean(trace["log_prob"][r, j].mean()),
                "std_mean": _clean(trace["std"][r, j].mean()),
                "min": _clean(trace["min"][r, j].min()),
                "max": _clean(trace["max"][r, j].max()),
            }
        nonfinite = int(trace["nonfinite"][-1, j])
        per["nonfinite_chains"] = nonfinite
        per["swd_ratio_end_over_start"] = _clean(swd[-1, j] / swd[0, j])
        per["verdict"] = drift_verdict(swd[0, j], swd[-1, j], nonfinite, settings.drift_ratio)
        metrics[f"level_{lv}"] = per
    metrics["verdict"] = max((metrics[f"level_{lv}"]["verdict"] for lv in levels), key=_ORDER.index)

    log_p = trace["log_prob"].astype(np.float64)
    traces = {
        **trace,
        "level": np.asarray(levels),
        "horizon": np.asarray(horizons),
        "quantile": np.asarray(QUANTILES),
        "log_prob_mean": log_p.mean(-1),
        "log_prob_quantiles": np.moveaxis(np.quantile(log_p, QUANTILES, axis=-1), 0, -1),
        "swd_ratio": swd,
        "mmd2": mmd,
        "drift_ratio": np.asarray(settings.drift_ratio),
        "samples": samples.astype(np.float32),
        "reference": np.stack(references).astype(np.float32),
    }
    return metrics, traces
