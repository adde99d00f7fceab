"""DRL against CDRL at equal compute: sample quality against the number of network passes per
sample, for K Langevin steps per level (K = 0: CDRL's initializer alone)."""

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from drlx.energy import ConditionalEBM
from drlx.evaluate.digits_features import DigitsClassifier, features_and_probs
from drlx.evaluate.feature_metrics import feature_frechet_distance
from drlx.evaluate.toy_metrics import sliced_wasserstein
from drlx.evaluate.uncertainty import Draws, comparison, repeated_draws
from drlx.experiment import Experiment
from drlx.samplers.many import sample_many
from drlx.sharding import make_mesh

# 7: the most steps within a quarter of DRL's 30 (CDRL's claim: DRL's quality at a quarter of its
# steps); each method's own generation K joins these (`steps_sweep`)
STEPS = (0, 5, 7, 15, 30)


def network_passes(exp: Experiment, ebm: ConditionalEBM, k: int) -> int:
    """Network passes to draw one sample: K energy-gradient passes at each of the T levels, one
    initializer pass per level for CDRL, one more energy-gradient pass for Tweedie's step."""
    levels = exp.schedule.num_levels
    return levels * k + (levels if ebm.proposal is not None else 0) + int(exp.tweedie)


def timed_samples(exp: Experiment, ebm: ConditionalEBM, k: int) -> tuple[np.ndarray, float]:
    """exp.evaluate.num_samples samples with K steps per level, and the seconds they took (the
    chain compiled beforehand on one chunk, so the time is the sampling's)."""
    sampler = dataclasses.replace(exp.eval_sampler, num_steps=k)
    num = exp.evaluate.num_samples
    chunk = min(exp.runtime.sample_batch_size, num)
    mesh = make_mesh(exp.runtime.devices)

    def run(n):
        return sample_many(
            ebm, sampler, exp.key("sample"), n, exp.shape, chunk, False, mesh, exp.tweedie
        )

    run(chunk)  # compile
    start = time.perf_counter()
    samples = run(num)
    return samples, time.perf_counter() - start


def swd_quality(
    exp: Experiment, heldout: np.ndarray, heldout_b: np.ndarray
) -> Callable[[np.ndarray], Draws]:
    """Samples -> the sliced Wasserstein distance over the experiment's repeated draws."""
    flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)  # noqa: E731
    pool = flat(np.concatenate([heldout, heldout_b]))
    e = exp.evaluate
    size = e.draw_size or len(heldout)

    def metric(x, ref):
        return sliced_wasserstein(x, ref, e.num_projections)

    return lambda samples: repeated_draws(metric, flat(samples), pool, e.num_draws, size)


def fd_quality(
    exp: Experiment, extractor: DigitsClassifier, heldout: np.ndarray, heldout_b: np.ndarray
) -> Callable[[np.ndarray], Draws]:
    """Samples -> the Frechet distance in the digits classifier's features over the
    experiment's repeated draws (samples clipped to [-1, 1], as in `digits_metrics`)."""
    features = lambda x: features_and_probs(extractor, np.clip(x, -1.0, 1.0))[0]  # noqa: E731
    pool = features(np.concatenate([heldout, heldout_b]))
    e = exp.evaluate
    size = e.draw_size or len(heldout)
    return lambda samples: repeated_draws(
        feature_frechet_distance, features(samples), pool, e.num_draws, size
    )


def steps_sweep(
    methods: dict[str, tuple[Experiment, ConditionalEBM]],
    quality: Callable[[np.ndarray], Draws],
    metric: str,
    steps: tuple[int, ...] = STEPS,
) -> dict:
    """Quality over repeated draws for every method and K.

    Arguments:
        methods: {"drl": (experiment, ebm), "cdrl": (experiment, ebm)}.
        quality: samples -> the `Draws` of one metric (`repeated_draws`, the same pool and
            seed for every call); its ratio to the held-out floor is the number compared.
        metric: the ratio's name in the rows ("fd_over_floor", "swd_over_floor").
        steps: the K values, to which each method's own generation K is added (its default,
            the reference it is compared at); K = 0 only for methods with an initializer.

    Returns:
        {"metric", "rows": [{"method", "langevin_steps_per_level", "network_passes_per_sample",
        "sampling_seconds", metric: estimate}], "comparisons": CDRL against DRL at each K and
        at DRL's largest K}.
    """
    rows, ratios = [], {}
    for method, (exp, ebm) in methods.items():
        for k in sorted({*steps, exp.eval_sampler.num_steps}):
            if k == 0 and ebm.proposal is None:
                continue  # DRL without steps is its top-level noise
            samples, seconds = timed_samples(exp, ebm, k)
            draws = quality(samples)
            ratios[method, k] = draws.ratio
            rows.append({
                "method": method,
                "langevin_steps_per_level": k,
                "network_passes_per_sample": network_passes(exp, ebm, k),
                "sampling_seconds": seconds,
                metric: draws.ratio.to_json(),
                "floor": draws.floor.to_json(),
            })  # fmt: skip
            print(f"{method} K={k}: {metric} {draws.ratio.mean:.3f}, {seconds:.1f} s")
    # Welch's test: conservative here, the two methods' draws sharing their held-out splits
    comparisons = []
    reference = max(k for m, k in ratios if m == "drl")
    for k in sorted({k for _, k in ratios}):
        for base in {k, reference}:
            if ("cdrl", k) in ratios and ("drl", base) in ratios:
                c = comparison(ratios["cdrl", k], ratios["drl", base])
                comparisons.append({"cdrl_steps": k, "drl_steps": base, **c})
    return {"metric": metric, "rows": rows, "comparisons": comparisons}


def sweep_figure(path, sweep: dict, title: str) -> None:
    """Quality ratio (mean and 95% interval) against network passes per sample, per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    metric = sweep["metric"]
    for method in dict.fromkeys(r["method"] for r in sweep["rows"]):
        rows = [r for r in sweep["rows"] if r["method"] == method]
        x = [r["network_passes_per_sample"] for r in rows]
        mean = np.array([r[metric]["mean"] for r in rows])
        low = np.array([r[metric]["low"] for r in rows])
        high = np.array([r[metric]["high"] for r in rows])
        err = np.stack([mean - low, high - mean])
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=method.upper())
        for r, xi, m in zip(rows, x, mean, strict=True):
            ax.annotate(f"K={r['langevin_steps_per_level']}", (xi, m), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="held-out floor")
    ax.set_xlabel("network passes per sample")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (95% interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.savefig(path, format="png", dpi=110)
