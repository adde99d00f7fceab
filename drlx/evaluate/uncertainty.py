"""Sample-quality numbers over repeated draws, with standard errors and 95% intervals.

A distance such as the Frechet distance between 297 model samples and 297 held-out images moves
a lot from one draw of samples to the next, so one draw cannot decide between two methods. Here
a metric is computed on R draws instead. Draw r (r = 0 .. R-1, `np.random.default_rng([seed,
r])`) splits the held-out pool at random into two disjoint sets A_r and B_r of `size` rows each
and takes a set S_r of `size` model samples; it records

    model_r = metric(S_r, A_r)    the model's value,
    floor_r = metric(B_r, A_r)    the floor: held-out data against held-out data.

S_r is the r-th block of `size` consecutive rows of the samples when there are at least R *
size of them (the S_r are then disjoint: independent draws if the rows are independent, as
separate chains give), else a bootstrap resample (`size` rows drawn with replacement from all
samples, with a warning). `Draws.selection` says which ("disjoint" or "bootstrap").

Four quantities are summarised, each by an `Estimate` (a point estimate, its standard error and
a 95% t-interval with R - 1 degrees of freedom):

- model and floor: the mean of the R values, se = std(ddof = 1) / sqrt(R), interval mean +-
  t_{0.975, R-1} se;
- excess: the same for model_r - floor_r;
- ratio: mean(model) / mean(floor), the ratio of the means, with the delta-method standard
  error (`Estimate.ratio`). Not the mean of the per-draw ratios model_r / floor_r (kept in
  `values` for reference): that estimates E[model / floor], which exceeds E[model] / E[floor]
  by about the squared coefficient of variation of the floor (Jensen's inequality). For equal
  laws at size 200 it came out 1.04 (8-d Frechet distance) and 1.07 (2-d sliced Wasserstein),
  a bias that does not shrink with R; the ratio of means came out 1.00-1.02.

What the interval means. Given the held-out pool (and, with bootstrap selection, the samples),
the R draws are independent and identically distributed: each uses fresh random numbers and its
own block of samples. So the interval is a 95% t-interval for the expected value over all such
draws *on this pool*: where the reported number would settle with more samples and more splits
of the same pool. It is exact for means of normal per-draw values and approximate otherwise
(the central limit theorem over R draws, and the delta method for the ratio; take R >= 10).

Caveat. The splits of one finite pool overlap from draw to draw, so the reference part of the
spread is a resampling estimate (like a bootstrap), not variation between independent reference
sets, and the pool's own deviation from the data distribution, common to every draw, is not in
the interval. Comparing two models against the same pool, it enters both alike (to first order)
and matters little. Comparing a model with its floor, it does: the model sees the pool's offset
from the true distribution, the floor (data against data of the same pool) does not. So "the
ratio's interval covers 1" is a check against this pool; for samples from the data law itself,
the share of intervals covering 1 was about 0.94 with a pool 20 x `size` and R = 10, but with a
pool of only 2 x `size` (the digits: 594 = 2 x 297) 0.89-0.90 at R = 10, 0.84 at R = 20 and
0.77 at R = 40 (Frechet distance of 64-d Gaussians, 100 pools): the interval narrows, the
offset stays.

Bootstrap selection has a further, larger caveat: repeated rows make a set look smaller, which
raises distances over the floor (drawn without repeats), and the spread only reflects resampling
of one set of samples. With 200 samples from the data law itself resampled to size 200, the
ratio came out 1.47 (8-d Frechet) and 1.22 (2-d sliced Wasserstein) instead of 1. Give R * size
samples.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats

LEVEL = 0.95
QUANTITIES = ("model", "floor", "ratio", "excess")

Metric = Callable[[np.ndarray, np.ndarray], "float | Mapping[str, float]"]


@dataclass(frozen=True, eq=False)
class Estimate:
    """A quantity estimated from R draws, with its standard error and t-interval.

    Every estimate is the mean of R per-draw "linearized" values psi_r, and its interval the
    t-interval of that mean: se = std(psi, ddof = 1) / sqrt(R), [low, high] = mean -+
    t_{(1 + level) / 2, R - 1} se. For a mean (`Estimate.of`) psi_r are the per-draw values
    themselves; for a ratio of means (`Estimate.ratio`) they are its first-order (delta-method)
    linearization, so the interval is approximate to the extent the denominator's mean varies.

    Attributes:
        values: the per-draw values (R,) (per-draw ratios for a ratio), float64.
        linearized: psi (R,), whose mean is `mean` (equal to `values` for a mean).
        mean: the estimate: the mean of the values, or the ratio of two means.
        se: its standard error.
        low, high: the interval.
        level: the interval's confidence level (0.95).
        kind: "mean" or "ratio of means".
    """

    values: np.ndarray
    linearized: np.ndarray
    mean: float
    se: float
    low: float
    high: float
    level: float = LEVEL
    kind: str = "mean"

    @classmethod
    def of(cls, values, level: float = LEVEL) -> Estimate:
        """The mean of per-draw values (at least 2, all finite), se = std(ddof = 1) / sqrt(R)."""
        v = _per_draw(values)
        return cls._from_linearized(v, v, level, "mean")

    @classmethod
    def ratio(cls, numerator, denominator, level: float = LEVEL) -> Estimate:
        """The ratio of means Q = mean(numerator) / mean(denominator) (denominators > 0).

        Linearized values psi_r = Q + (n_r - Q d_r) / mean(d), the delta method for a ratio of
        means (the classical ratio estimator's standard error): it uses the correlation of
        numerator and denominator, and unlike the mean of the per-draw ratios, whose
        expectation exceeds E[n] / E[d] by about the squared coefficient of variation of d
        (Jensen's inequality), its bias shrinks as 1 / R.
        """
        n, d = _per_draw(numerator), _per_draw(denominator)
        if n.shape != d.shape:
            raise ValueError(f"numerator and denominator differ in length: {len(n)}, {len(d)}")
        if not np.all(d > 0):
            raise ValueError(f"a ratio needs positive denominators, got {d.tolist()}")
        q = n.mean() / d.mean()
        return cls._from_linearized(n / d, q + (n - q * d) / d.mean(), level, "ratio of means")

    @classmethod
    def _from_linearized(cls, values, psi, level: float, kind: str) -> Estimate:
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        mean = float(psi.mean())
        se = float(psi.std(ddof=1) / math.sqrt(len(psi)))
        half = float(scipy.stats.t.ppf(0.5 + level / 2.0, len(psi) - 1)) * se
        return cls(values, psi, mean, se, mean - half, mean + half, level, kind)

    @property
    def num_draws(self) -> int:
        return len(self.values)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_json(self) -> dict:
        """Plain floats and a list of the per-draw values."""
        return {
            "kind": self.kind,
            "mean": self.mean,
            "se": self.se,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "num_draws": self.num_draws,
            "values": [float(x) for x in self.values],
        }


def _per_draw(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) < 2:
        raise ValueError(f"an interval needs at least 2 draws, got {len(v)}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"non-finite per-draw values: {v.tolist()}")
    return v


@dataclass(frozen=True, eq=False)
class Draws:
    """One metric over repeated draws: the model's value, the floor, their ratio and difference.

    Attributes:
        model: metric(S_r, A_r) over the draws.
        floor: metric(B_r, A_r) over the draws.
        ratio: mean(model) / mean(floor) (`Estimate.ratio`; its `values` are the per-draw
            ratios), or None when some floor_r <= 0 (unbiased estimators such as MMD^2 or KID
            scatter around 0 for equal laws: use `excess` for them).
        excess: model_r - floor_r.
        num_draws: R.
        size: rows in each of S_r, A_r and B_r.
        selection: "disjoint" (S_r are disjoint blocks of the samples) or "bootstrap".
        seed: the seed of the draws.
        num_samples: rows of model samples given.
        pool_size: rows of the held-out pool.
        pool_digest: a hash of the pool, so that paired comparisons can check they share it.
    """

    model: Estimate
    floor: Estimate
    ratio: Estimate | None
    excess: Estimate
    num_draws: int
    size: int
    selection: Literal["disjoint", "bootstrap"]
    seed: int
    num_samples: int
    pool_size: int
    pool_digest: str

    def estimate(self, quantity: str) -> Estimate:
        """The estimate named `quantity` ("model", "floor", "ratio" or "excess")."""
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
        est = getattr(self, quantity)
        if est is None:
            raise ValueError("no ratio: some floor values are <= 0 (use 'excess')")
        return est

    def to_json(self) -> dict:
        """JSON-ready: the draw settings and each estimate's `to_json` (ratio may be None)."""
        out = {
            "num_draws": self.num_draws,
            "size": self.size,
            "selection": self.selection,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "pool_size": self.pool_size,
            "pool_digest": self.pool_digest,
        }
        for name in QUANTITIES:
            est = getattr(self, name)
            out[name] = None if est is None else est.to_json()
        return out


def draw_indices(
    num_samples: int, pool_size: int, num_draws: int, size: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], Literal["disjoint", "bootstrap"]]:
    """The row indices of every draw, as `repeated_draws` uses them.

    Arguments:
        num_samples: rows of model samples (at least `size`).
        pool_size: rows of the held-out pool (at least 2 * size).
        num_draws: R >= 2.
        size: rows per set, >= 1.
        seed: non-negative integer; draw r uses `np.random.default_rng([seed, r])`.

    Returns:
        ([(s_r, a_r, b_r) for r in range(R)], selection): indices into the samples (s_r) and
        into the pool (a_r, b_r, disjoint), each of length `size`; selection is "disjoint" when
        num_samples >= R * size (s_r = rows r * size .. (r + 1) * size - 1), else "bootstrap".
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 for an interval, got {num_draws}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if 2 * size > pool_size:
        raise ValueError(
            f"the held-out pool has {pool_size} rows, too few for two disjoint sets of size "
            f"{size} (needs 2 * {size} = {2 * size})"
        )
    if num_samples < size:
        raise ValueError(f"{num_samples} model samples are fewer than size = {size}")
    selection = "disjoint" if num_samples >= num_draws * size else "bootstrap"
    if selection == "bootstrap":
        warnings.warn(
            f"{num_samples} model samples < num_draws * size = {num_draws * size}: bootstrap "
            "resampling, whose repeated rows inflate distances over the floor",
            stacklevel=3,
        )
    out = []
    for r in range(num_draws):
        rng = np.random.default_rng([int(seed), r])
        perm = rng.permutation(pool_size)
        if selection == "disjoint":
            s = np.arange(r * size, (r + 1) * size)
        else:
            s = rng.integers(0, num_samples, size)
        out.append((s, perm[:size], perm[size : 2 * size]))
    return out, selection


def _digest(pool: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{pool.shape}{pool.dtype}".encode())
    h.update(np.ascontiguousarray(pool).tobytes())
    return h.hexdigest()


def _as_values(result, where: str) -> dict[str | None, float]:
    """A metric's return value as {key: float}; key None for a plain float."""
    items = result.items() if isinstance(result, Mapping) else [(None, result)]
    out = {}
    for key, value in items:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: the metric returned {value!r}, not a float") from None
        if not math.isfinite(x):
            raise ValueError(f"{where}: the metric returned a non-finite value {x}")
        out[key] = x
    return out


def repeated_draws(
    metric: Metric,
    samples,
    pool,
    num_draws: int,
    size: int,
    seed: int = 0,
    level: float = LEVEL,
) -> Draws | dict[str, Draws]:
    """Compute `metric` for R draws of model samples and of a random split of the held-out pool.

    For r = 0 .. R-1 (see the module docstring and `draw_indices`): model_r = metric(S_r, A_r)
    and floor_r = metric(B_r, A_r), with A_r, B_r a random disjoint split of the pool and S_r
    the r-th block of samples (or a bootstrap resample when there are fewer than R * size).

    Arguments:
        metric: (x, reference) -> float, or -> {name: float} for several metrics from one pass
            (e.g. the Frechet distance and KID of the same features). x and reference are rows
            of `samples` and `pool` (fancy-indexed along axis 0, other axes untouched).
        samples: model samples (M, ...), rows independent and identically distributed.
        pool: held-out data (N, ...), N >= 2 * size.
        num_draws: R >= 2.
        size: rows in every set, as in the single-draw evaluation (the metrics depend on it).
        seed: non-negative integer seed of the splits and resamples.
        level: confidence level of the intervals.

    Returns:
        A `Draws` if the metric returns a float; a {name: Draws} with the metric's keys if it
        returns a dict (every draw must return the same keys).
    """
    samples, pool = np.asarray(samples), np.asarray(pool)
    draws, selection = draw_indices(len(samples), len(pool), num_draws, size, seed)
    model: dict[str | None, list[float]] = {}
    floor: dict[str | None, list[float]] = {}
    for r, (s, a, b) in enumerate(draws):
        ref = pool[a]
        for store, x, what in ((model, samples[s], "model"), (floor, pool[b], "floor")):
            values = _as_values(metric(x, ref), f"draw {r} ({what})")
            if r == 0 and what == "model":
                model.update({k: [] for k in values})
                floor.update({k: [] for k in values})
            if set(values) != set(store):
                raise ValueError(
                    f"draw {r} ({what}): the metric returned keys {sorted(map(str, values))}, "
                    f"the first draw {sorted(map(str, store))}"
                )
            for k, v in values.items():
                store[k].append(v)
    common = {
        "num_draws": num_draws,
        "size": size,
        "selection": selection,
        "seed": int(seed),
        "num_samples": len(samples),
        "pool_size": len(pool),
        "pool_digest": _digest(pool),
    }
    out = {}
    for k in model:
        m, f = np.array(model[k]), np.array(floor[k])
        ratio = Estimate.ratio(m, f, level) if np.all(f > 0) else None
        excess = Estimate.of(m - f, level)
        out[k] = Draws(Estimate.of(m, level), Estimate.of(f, level), ratio, excess, **common)
    if None in out:  # the metric returns a float
        return out[None]
    return out


def covers(estimate: Estimate, value: float) -> bool:
    """Whether the estimate's interval [low, high] contains `value` (e.g. a ratio and 1)."""
    return estimate.low <= value <= estimate.high


def _verdict(diff: float, se: float, df: float, level: float, how: str) -> dict:
    # se = 0: both sets of draws are constant, the difference is known exactly
    half = float(scipy.stats.t.ppf(0.5 + level / 2.0, df)) * se if se > 0 else 0.0
    low, high = diff - half, diff + half
    different = low > 0 or high < 0
    return {
        "difference": diff,
        "se": se,
        "df": df,
        "low": low,
        "high": high,
        "level": level,
        "method": how,
        "verdict": "different" if different else "not different",
    }


def comparison(a: Estimate, b: Estimate, level: float = LEVEL) -> dict:
    """Welch's comparison of two independent estimates: the difference of means a - b, its
    standard error sqrt(se_a^2 + se_b^2), Welch-Satterthwaite degrees of freedom and the
    t-interval; the verdict is "different" only when the interval excludes 0.

    Valid for independent draws; estimates computed against the same pool with the same seed
    share their A_r and are positively correlated, which makes Welch's interval conservative
    (too wide): `paired_comparison` uses the pairing.

    Returns:
        {"difference", "se", "df", "low", "high", "level", "method", "verdict"} (plain floats
        and strings).
    """
    va, vb = a.se**2, b.se**2
    se = math.sqrt(va + vb)
    denom = va**2 / (a.num_draws - 1) + vb**2 / (b.num_draws - 1)
    df = (va + vb) ** 2 / denom if denom > 0 else float(a.num_draws + b.num_draws - 2)
    return _verdict(a.mean - b.mean, se, df, level, "welch")


def paired_comparison(a: Draws, b: Draws, quantity: str = "model", level: float = LEVEL) -> dict:
    """Compare one quantity of two `Draws` made on the same pool with the same seed, size and
    number of draws (so draw r of both used the same A_r and B_r): a t-interval on the per-draw
    differences a_r - b_r. Narrower than Welch's when the shared reference sets correlate the
    two (they do for distances to A_r). The interval is for the difference on this pool.

    Returns:
        The same dict as `comparison` (method "paired").
    """
    for field in ("num_draws", "size", "seed", "pool_size", "pool_digest"):
        if getattr(a, field) != getattr(b, field):
            raise ValueError(
                f"paired comparison needs draws on the same pool and splits; {field} differs: "
                f"{getattr(a, field)} vs {getattr(b, field)}"
            )
    d = Estimate.of(a.estimate(quantity).linearized - b.estimate(quantity).linearized, level)
    return _verdict(d.mean, d.se, float(d.num_draws - 1), level, "paired")


def differ(a: Estimate, b: Estimate, level: float = LEVEL) -> bool:
    """Whether Welch's interval for the difference of means (`comparison`) excludes 0."""
    return comparison(a, b, level)["verdict"] == "different"


def format_pm(estimate: Estimate, digits: int = 2) -> str:
    """The mean ± the half-width of its interval, `digits` decimals: e.g. "1.23 ± 0.05"."""
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"


def quality_draws(
    metric: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    samples: np.ndarray,
    heldout: np.ndarray,
    heldout_b: np.ndarray,
    num_draws: int,
    size: int | None = None,
    seed: int = 0,
) -> dict:
    """Every metric of `metric(x, reference)` over `num_draws` draws (`repeated_draws`): draw r
    scores a block of `size` samples, and its floor `size` held-out points, against `size`
    other held-out points, the held-out pool (both held-out sets) split anew each draw.
    `size` defaults to the size of one held-out set.

    Returns:
        {"num_samples", "draw_size", "num_draws", "selection", NAME: {"model", "floor",
        "ratio", "excess"} for each metric}, each estimate with its mean, standard error and
        95% interval (drlx/evaluate/uncertainty.py).
    """
    size = size or len(heldout)
    pool = np.concatenate([heldout, heldout_b])
    draws = repeated_draws(metric, samples, pool, num_draws, size, seed)
    first = next(iter(draws.values()))
    out = {
        "num_samples": len(samples),
        "draw_size": size,
        "num_draws": num_draws,
        "selection": first.selection,
    }
    for name, d in draws.items():
        out[name] = {q: d.estimate(q).to_json() if getattr(d, q) else None for q in QUANTITIES}
    return out
