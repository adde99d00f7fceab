"""Repeated draws, standard errors and intervals (drlx/evaluate/uncertainty.py).

The statistical tests are seeded, so each one is deterministic; their thresholds are set from
the rates the intervals should reach, with room for the binomial scatter of a few seeds.
"""

import json

import numpy as np
import pytest
import scipy.stats

from drlx.evaluate import uncertainty as unc
from drlx.evaluate.feature_metrics import feature_frechet_distance
from drlx.evaluate.toy_metrics import sliced_wasserstein

NUM_SEEDS = 20


def _mixture(rng, n):
    """Three Gaussian blobs in the plane (x-std about 0.9)."""
    centres = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])
    return centres[rng.integers(0, 3, n)] + 0.4 * rng.standard_normal((n, 2))


def _swd(x, y):
    return sliced_wasserstein(x, y, num_projections=64)


def _gauss8(rng, n):
    return rng.standard_normal((n, 8))


# (name, metric, sampler, size, std of the samples' first coordinate)
SETUPS = {
    "sliced_wasserstein_2d_mixture": (_swd, _mixture, 200, 0.9),
    "frechet_8d_gaussian": (feature_frechet_distance, _gauss8, 500, 1.0),
}
R = 10
POOL = 4000


def _draws(setup, seed, shift=0.0, num_draws=R):
    """Same-distribution samples and pool (seeded by `seed`), samples optionally shifted by
    `shift` standard deviations along the first axis; the draws unshifted and shifted."""
    metric, sampler, size, std = SETUPS[setup]
    rng = np.random.default_rng(1000 + seed)
    pool, samples = sampler(rng, POOL), sampler(rng, num_draws * size)
    moved = samples.copy()
    moved[:, 0] += shift * std
    same = unc.repeated_draws(metric, samples, pool, num_draws, size, seed)
    return same, unc.repeated_draws(metric, moved, pool, num_draws, size, seed)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_same_distribution_ratio_interval_covers_one(setup):
    # Samples and pool come from one law, so E[model_r] = E[floor_r] (S_r and B_r are both
    # fresh draws compared with A_r) and the ratio of means targets 1. The pool (4000 rows) is
    # 20 times `size`, so its own deviation from the law, shared by all draws and outside the
    # interval (module docstring), is small. Over 200 seeds 0.935 (sliced Wasserstein) and
    # 0.94 (Frechet) of the intervals covered 1; P(Binomial(20, 0.93) >= 16) = 0.98. An
    # interval with the wrong standard error (e.g. std / R) or a floor from overlapping A and B
    # (far smaller, ratio >> 1) fails.
    covered, ratios = 0, []
    for seed in range(NUM_SEEDS):
        draws, _ = _draws(setup, seed)
        assert draws.selection == "disjoint"
        covered += unc.covers(draws.ratio, 1.0)
        ratios.append(draws.ratio.mean)
    assert covered >= 16, (covered, ratios)
    assert abs(np.mean(ratios) - 1.0) < 0.1


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_shifted_samples_are_detected(setup):
    # A shift of 0.3 std along one axis: ratio about 2 (1.84 for the Frechet distance at size
    # 500, 2.0 for the sliced Wasserstein distance at 200). With R = 20, over 100 seeds every
    # check below held for all seeds (Frechet) and 98 (sliced Wasserstein; the paired interval
    # was once not the narrower), so 7 of 8 seeds fail with probability about 0.01.
    passed = []
    for seed in range(8):
        same, shifted = _draws(setup, seed, shift=0.3, num_draws=20)
        np.testing.assert_array_equal(shifted.floor.values, same.floor.values)  # same splits
        cmp = unc.comparison(shifted.ratio, same.ratio)
        # the same pool splits and samples: pairing removes the shared variation
        paired = unc.paired_comparison(shifted, same, "ratio")
        checks = (
            shifted.ratio.low > 1.0,
            unc.differ(shifted.ratio, same.ratio),
            cmp["verdict"] == "different" and cmp["low"] > 0,
            unc.differ(shifted.model, same.model),
            paired["verdict"] == "different",
            paired["high"] - paired["low"] < cmp["high"] - cmp["low"],
        )
        passed.append(all(checks))
    assert sum(passed) >= 7, passed


def _tagged(n, rows=1):
    """Points whose first coordinate says where they came from: 1 = samples, 0 = pool."""
    return np.ones((n, rows)), np.zeros((n, rows))


def _synthetic_metric(rng, model_mean, model_sd, floor_mean, floor_sd):
    """Ignores the points' values beyond their tag: iid normal draws per call."""

    def metric(x, ref):
        assert np.all(ref[:, 0] == 0.0)
        if x[0, 0] == 1.0:
            return rng.normal(model_mean, model_sd)
        return rng.normal(floor_mean, floor_sd)

    return metric


def test_interval_covers_the_true_mean_at_the_nominal_rate():
    # Per-draw values iid normal: the t-interval is exact, so over 400 repetitions the number
    # covering the true mean is Binomial(400, 0.95): mean 380, sd 4.4; the bounds 0.90 and 0.99
    # are 4.6 and 3.7 sd away. With R = 5 a normal quantile (1.96) would cover only 0.88 of
    # the time, and std / R instead of std / sqrt(R) far less.
    samples, pool = _tagged(50)
    reps, hits = 400, {"model": 0, "floor": 0, "diff": 0}
    for rep in range(reps):
        rng = np.random.default_rng([7, rep])
        metric = _synthetic_metric(rng, 3.0, 0.5, 2.0, 0.2)
        draws = unc.repeated_draws(metric, samples, pool, num_draws=5, size=10, seed=rep)
        hits["model"] += unc.covers(draws.model, 3.0)
        hits["floor"] += unc.covers(draws.floor, 2.0)
        other = unc.Estimate.of(rng.normal(3.5, 1.5, 8))  # Welch: unequal sizes and spreads
        cmp = unc.comparison(draws.model, other)
        hits["diff"] += cmp["low"] <= -0.5 <= cmp["high"]
    for name, count in hits.items():
        assert 0.90 <= count / reps <= 0.99, (name, count)


def test_ratio_of_means_interval_covers_the_true_ratio():
    # The delta-method interval of a ratio of means: approximate, 0.95 in trials (2000 reps).
    reps, hits = 400, 0
    for rep in range(reps):
        rng = np.random.default_rng([8, rep])
        floor = 2.0 * (1.0 + 0.2 * rng.standard_normal(10))
        model = 3.0 * (1.0 + 0.2 * rng.standard_normal(10))
        est = unc.Estimate.ratio(model, floor)
        assert est.mean == pytest.approx(model.mean() / floor.mean(), rel=1e-12)
        hits += unc.covers(est, 1.5)
    assert 0.90 <= hits / reps <= 0.99, hits


def test_estimate_and_welch_comparison_against_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 0.3, 7), rng.normal(1.4, 0.8, 12)
    ea, eb = unc.Estimate.of(a), unc.Estimate.of(b)
    assert ea.se == pytest.approx(scipy.stats.sem(a), rel=1e-12)
    low, high = scipy.stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=scipy.stats.sem(a))
    assert (ea.low, ea.high) == (pytest.approx(low), pytest.approx(high))
    cmp = unc.comparison(ea, eb)
    ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (cmp["low"], cmp["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert cmp["difference"] == pytest.approx(a.mean() - b.mean())
    assert unc.differ(ea, eb) == (ci.low > 0 or ci.high < 0)
    assert unc.differ(ea, unc.Estimate.of(a + 5.0))
    assert not unc.differ(ea, unc.Estimate.of(a[::-1]))


def test_disjoint_blocks_when_there_are_enough_samples():
    num_draws, size = 6, 25
    samples = np.arange(num_draws * size, dtype=float)[:, None]  # ids >= 0
    pool = -1.0 - np.arange(70, dtype=float)[:, None]  # ids <= -1
    seen = []

    def metric(x, ref):
        assert np.all(ref < 0) and len(ref) == len(x) == size
        assert len(np.unique(ref)) == size
        if np.all(x >= 0):
            seen.append(x[:, 0])
        else:  # the floor: held-out rows, none of them in the reference set
            assert len(np.intersect1d(x, ref)) == 0 and len(np.unique(x)) == size
        return float(len(seen))

    draws = unc.repeated_draws(metric, samples, pool, num_draws, size, seed=4)
    assert draws.selection == "disjoint" and draws.num_draws == num_draws
    ids = np.concatenate(seen)
    assert len(seen) == num_draws and len(np.unique(ids)) == len(ids) == len(samples)
    # the splits differ between draws and repeat for the same seed
    indices, selection = unc.draw_indices(len(samples), len(pool), num_draws, size, 4)
    assert selection == "disjoint"
    assert len({tuple(np.sort(a)) for _, a, _ in indices}) == num_draws
    again, _ = unc.draw_indices(len(samples), len(pool), num_draws, size, 4)
    other, _ = unc.draw_indices(len(samples), len(pool), num_draws, size, 5)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(indices, again, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(indices, other, strict=True))


def test_bootstrap_when_there_are_too_few_samples():
    num_draws, size = 6, 25
    samples = np.arange(num_draws * size - 1, dtype=float)[:, None]
    pool = -1.0 - np.arange(50, dtype=float)[:, None]  # exactly 2 * size
    repeats = []

    def metric(x, ref):
        if np.all(x >= 0):
            repeats.append(len(x) - len(np.unique(x)))
        else:
            assert len(np.union1d(x, ref)) == len(pool)  # A and B split the whole pool
        return 1.0 + len(repeats)

    with pytest.warns(UserWarning, match="149 model samples < num_draws \\* size = 150"):
        draws = unc.repeated_draws(metric, samples, pool, num_draws, size, seed=0)
    assert draws.selection == "bootstrap" and draws.to_json()["selection"] == "bootstrap"
    assert sum(repeats) > 0  # drawn with replacement


def test_sizes_are_checked():
    samples, pool = np.zeros((100, 2)), np.zeros((59, 2))
    with pytest.raises(ValueError, match=r"59 rows.*size 30.*60"):
        unc.repeated_draws(_swd, samples, pool, 3, 30, 0)
    with pytest.raises(ValueError, match=r"20 model samples .* size = 25"):
        unc.repeated_draws(_swd, samples[:20], pool, 3, 25, 0)
    with pytest.raises(ValueError, match="num_draws"):
        unc.repeated_draws(_swd, samples, pool, 1, 10, 0)


def test_dict_metrics_give_one_summary_per_key():
    rng = np.random.default_rng(11)
    samples, pool = _mixture(rng, 400), _mixture(rng, 300)
    args = (samples, pool, 5, 60, 9)

    def both(x, y):
        return {"swd": _swd(x, y), "fd": feature_frechet_distance(x, y), "excess_only": -1.0}

    out = unc.repeated_draws(both, *args)
    assert set(out) == {"swd", "fd", "excess_only"}
    for name, metric in (("swd", _swd), ("fd", feature_frechet_distance)):
        alone = unc.repeated_draws(metric, *args)
        assert isinstance(alone, unc.Draws)
        for q in unc.QUANTITIES:
            np.testing.assert_array_equal(out[name].estimate(q).values, alone.estimate(q).values)
        assert out[name].ratio.mean == pytest.approx(
            out[name].model.values.mean() / out[name].floor.values.mean(), rel=1e-12
        )
    assert out["excess_only"].ratio is None  # floors <= 0: no ratio
    with pytest.raises(ValueError, match="excess"):
        out["excess_only"].estimate("ratio")
    assert out["excess_only"].excess.se == 0.0

    keys = iter([{"a": 1.0}, {"a": 2.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="keys"):
        unc.repeated_draws(lambda x, y: next(keys), *args)


def test_to_json_is_plain_and_complete():
    rng = np.random.default_rng(2)
    draws = unc.repeated_draws(_swd, _mixture(rng, 300), _mixture(rng, 200), 4, 50, 1)
    record = json.loads(json.dumps(draws.to_json()))
    assert record["num_draws"] == 4 and record["size"] == 50 and record["selection"] == "disjoint"
    for q in unc.QUANTITIES:
        est = draws.estimate(q)
        assert record[q]["values"] == est.values.tolist()
        assert [record[q][k] for k in ("mean", "se", "low", "high")] == [
            est.mean, est.se, est.low, est.high
        ]  # fmt: skip
    assert record["ratio"]["kind"] == "ratio of means" and record["model"]["kind"] == "mean"
    model, floor = np.array(record["model"]["values"]), np.array(record["floor"]["values"])
    assert record["ratio"]["values"] == pytest.approx((model / floor).tolist())
    assert record["excess"]["values"] == pytest.approx((model - floor).tolist())


def test_covers_and_format_pm():
    values = np.array([1.0, 2.0, 3.0])
    est = unc.Estimate.of(values)
    half = scipy.stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # sd 1, R 3
    assert est.half_width == pytest.approx(half)
    assert unc.format_pm(est, 2) == f"2.00 ± {half:.2f}"
    assert unc.format_pm(est, 0) == f"2 ± {half:.0f}"
    assert unc.covers(est, 2.0 + 0.99 * half) and not unc.covers(est, 2.0 + 1.01 * half)
    assert unc.covers(est, est.low) and unc.covers(est, est.high)
