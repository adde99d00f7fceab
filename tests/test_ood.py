"""OOD detection (drlx/evaluate/ood.py, stages/ood.py): the detection metrics against hand
computations and scikit-learn, the per-example scores against closed forms for Gaussian
conditionals (quadratic energies), the OOD sets, and the stage end to end on a tiny toy."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AbstractFixedNetwork, tiny_toy_spec
from jaxtyping import Array
from sklearn.metrics import average_precision_score, roc_auc_score

from drlx.builder import build
from drlx.density.bound import forward_path
from drlx.energy import ConditionalEBM
from drlx.evaluate.ood import (
    DIGIT_SETS,
    cheap_scores,
    detection_metrics,
    digit_ood_sets,
    fit_gaussian,
    mahalanobis_sq,
    per_example_bound,
    quantize,
    shift_images,
    toy_ood_sets,
)
from drlx.keys import example_keys, per_example_normal
from drlx.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DIM = 2


# ---- detection metrics ----


def test_detection_metrics_match_a_hand_computed_case():
    """In (positive) 0.9, 0.8, 0.4 against OOD 0.7, 0.3: 5 of 6 pairs ordered, AUROC 5/6.
    Ranked: in, in, out, in, out: AUPR-in = (1 + 1 + 3/4) / 3; with the OOD examples positive
    and scores negated: out, in, out, ...: AUPR-out = (1 + 2/3) / 2."""
    m = detection_metrics(np.array([0.9, 0.8, 0.4]), np.array([0.7, 0.3]), num_bootstrap=200)
    assert m["auroc"]["value"] == pytest.approx(5 / 6)
    assert m["aupr_in"]["value"] == pytest.approx(2.75 / 3)
    assert m["aupr_out"]["value"] == pytest.approx((1 + 2 / 3) / 2)
    for name in ("auroc", "aupr_in", "aupr_out"):
        assert 0 <= m[name]["low"] <= m[name]["value"] <= m[name]["high"] <= 1
    assert m["num_in"] == 3 and m["num_out"] == 2 and m["num_nonfinite"] == 0
    ties = detection_metrics(np.array([1.0, 1.0]), np.array([1.0, 0.0]), num_bootstrap=10)
    assert ties["auroc"]["value"] == pytest.approx(0.75)  # a tie counts one half


def test_separated_scores_and_non_finite_scores():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(5, 1, 200), rng.normal(-5, 1, 150)
    m = detection_metrics(s_in, s_out, num_bootstrap=100)
    assert m["auroc"] == pytest.approx({"value": 1.0, "low": 1.0, "high": 1.0})
    assert m["aupr_in"]["value"] == pytest.approx(1.0)
    assert m["aupr_out"]["value"] == pytest.approx(1.0)
    assert m["margin_iqr"] > 3  # 10 sd apart, IQR 1.35 sd: (5 - 2.3 - (-5 + 2.3)) / 1.35 = 4
    # NaN and -inf rank below every finite score (least in-distribution), +inf above
    s_out[:10] = np.nan
    s_out[10:20] = -np.inf
    m = detection_metrics(s_in, s_out, num_bootstrap=10)
    assert m["auroc"]["value"] == 1.0 and m["num_nonfinite"] == 20
    s_out[:10] = np.inf
    m = detection_metrics(s_in, s_out, num_bootstrap=10)
    assert m["auroc"]["value"] == pytest.approx(1 - 10 / 150)


def test_bootstrap_metrics_equal_scikit_learn_with_ties():
    """The bootstrap's numpy AUROC/AP (ood._point) equal scikit-learn's, ties included; the
    interval of a score with AUROC about 0.76 (normal shift 1) covers its value."""
    from drlx.evaluate import ood

    rng = np.random.default_rng(1)
    for _ in range(50):
        a = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
        b = rng.integers(0, 6, rng.integers(1, 40)).astype(float) - 1
        y = np.r_[np.ones(len(a)), np.zeros(len(b))]
        s = np.r_[a, b]
        fast = ood._point(a, b)
        assert fast[0] == pytest.approx(roc_auc_score(y, s))
        assert fast[1] == pytest.approx(average_precision_score(y, s))
        assert fast[2] == pytest.approx(average_precision_score(1 - y, -s))
    m = detection_metrics(rng.normal(1, 1, 400), rng.normal(0, 1, 400), num_bootstrap=300)
    assert m["auroc"]["low"] < 0.76 < m["auroc"]["high"]
    assert m["auroc"]["high"] - m["auroc"]["low"] < 0.1


# ---- scores against closed forms ----


class QuadraticLevels(AbstractFixedNetwork):
    """g(y, t) = -k_t ||y - c_t||^2 / (2 w_t): level t's f = g / k_t is N(c_t, w_t I)."""

    centre: Array  # (T, D)
    var: Array  # (T,)
    scale: Array  # (T,)

    def embed(self, t):
        return self.centre[t], self.var[t], self.scale[t]

    def energy(self, y, context):
        c, w, k = context
        return -k * jnp.sum((y - c) ** 2, axis=-1) / (2.0 * w)


MU, S2 = np.array([0.3, -0.2]), 0.05  # data N(MU, S2 I)


def exact_ebm(schedule) -> tuple[ConditionalEBM, np.ndarray, np.ndarray]:
    """Each level's f the exact marginal of its y for data N(MU, S2 I): the model's joint is the
    forward joint, so the bound of every path is log N(x_0; MU, S2 I) (docs/method.md §7.4).
    Returns the EBM and the centres and variances of the levels' f."""
    a = np.asarray(schedule.a, np.float64)
    num = schedule.num_levels
    ct = np.concatenate([[1.0], np.cumprod(a[1:])])[:num]  # x_t | x_0 on the bound's path
    v = ct**2 * S2 + 1 - ct**2
    scale_y = np.concatenate([a[1:num], [1.0]])
    centre, var = (scale_y * ct)[:, None] * MU, scale_y**2 * v
    k = jnp.asarray(schedule.sigma[1:] ** 2)
    net = QuadraticLevels(jnp.asarray(centre, jnp.float32), jnp.asarray(var, jnp.float32), k)
    return ConditionalEBM(net, schedule, k, k), centre, var


@pytest.fixture(scope="module")
def toy_exp(tmp_path_factory):
    spec = tiny_toy_spec(
        tmp_path_factory.mktemp("ood") / "gauss.yaml", "gauss",
        density={"num_chains": 32, "num_annealing_steps": 100, "top_chains": 1024},
    )  # fmt: skip
    return build(load_spec(spec))


def test_level0_and_per_level_scores_equal_their_closed_forms(toy_exp):
    """level0 = -||a_1 x_0 - c_0||^2 / (2 w_0) at x_0 = abar_0 x + sigmabar_0 eps (eps from the
    example's key, tag T); the per-level vector is f_t(a x_t) minus the tether along the bound's
    own forward path (bound.forward_path), the top entry f_{T-1}(x_{T-1}); neither depends on
    the chunking."""
    sched = toy_exp.schedule
    ebm, centre, var = exact_ebm(sched)
    num = sched.num_levels
    x = (MU + np.random.default_rng(2).normal(0, 1, (37, DIM))).astype(np.float32)
    key = jax.random.key(5)
    level0, vec = cheap_scores(ebm, x, key, chunk=8)
    level0_b, vec_b = cheap_scores(ebm, x, key, chunk=64)
    np.testing.assert_allclose(level0, level0_b, rtol=1e-6)
    np.testing.assert_allclose(vec, vec_b, rtol=1e-6)

    a, sig = np.asarray(sched.a, np.float64), np.asarray(sched.sigma, np.float64)
    eps0 = np.asarray(per_example_normal(example_keys(key, len(x)), num, jnp.asarray(x)))
    x0 = float(sched.abar[0]) * x + float(sched.sigmabar[0]) * eps0
    want0 = -np.sum((a[1] * x0 - centre[0]) ** 2, axis=1) / (2 * var[0])
    np.testing.assert_allclose(level0, want0, rtol=1e-4, atol=1e-4)

    path = np.asarray(forward_path(ebm, jnp.asarray(x), key), np.float64)
    for t in range(num - 1):
        y = a[t + 1] * path[t]
        want = -np.sum((y - centre[t]) ** 2, 1) / (2 * var[t])
        want -= np.sum((y - path[t + 1]) ** 2, 1) / (2 * sig[t + 1] ** 2)
        np.testing.assert_allclose(vec[:, t], want, rtol=1e-4, atol=1e-3)
    top = -np.sum((path[-1] - centre[-1]) ** 2, 1) / (2 * var[-1])
    np.testing.assert_allclose(vec[:, -1], top, rtol=1e-4, atol=1e-3)


def test_per_example_bound_is_the_data_log_density_for_the_exact_model(toy_exp):
    """With the exact reverse conditionals each example's bound is log N(x; MU, S2 I) up to the
    AIS error, so it ranks examples as the true density does (points far from MU lowest)."""
    ebm, _, _ = exact_ebm(toy_exp.schedule)
    rng = np.random.default_rng(3)
    near = MU + np.sqrt(S2) * rng.normal(size=(24, DIM))
    far = MU + 4 * np.sqrt(S2) * rng.normal(size=(24, DIM))
    x = np.concatenate([near, far]).astype(np.float32)
    train = (MU + np.sqrt(S2) * rng.normal(size=(2000, DIM))).astype(np.float32)
    res = per_example_bound(toy_exp, ebm, x, train, jax.random.key(4))
    exact = -np.sum((x - MU) ** 2, axis=1) / (2 * S2) - 0.5 * DIM * np.log(2 * np.pi * S2)
    se = np.sqrt(np.sum(res.log_z_se**2, axis=1) + res.top_log_z_se**2)
    err = res.per_example - exact
    assert np.mean(se) < 0.2
    assert np.all(np.abs(err) < 5 * se + 1e-2), (err, se)
    assert np.corrcoef(res.per_example, exact)[0, 1] > 0.99
    m = detection_metrics(res.per_example[:24], res.per_example[24:], num_bootstrap=10)
    oracle = roc_auc_score(np.r_[np.ones(24), np.zeros(24)], exact)  # 0.972: some far are near
    assert abs(m["auroc"]["value"] - oracle) < 3 / 24**2  # AIS noise may swap a close pair


def test_mahalanobis_against_a_direct_computation():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(500, 3)) @ np.array([[2.0, 0, 0], [0.5, 1.0, 0], [0, 0.3, 0.2]])
    fit = fit_gaussian(ref, ridge=0.0)
    v = rng.normal(size=(5, 3))
    cov = np.cov(ref, rowvar=False)
    want = [float((r - ref.mean(0)) @ np.linalg.solve(cov, r - ref.mean(0))) for r in v]
    np.testing.assert_allclose(mahalanobis_sq(v, fit), want, rtol=1e-8)


# ---- the OOD sets ----


def test_digit_ood_sets():
    rng = np.random.default_rng(5)
    x = quantize(rng.uniform(-1, 1, (20, 8, 8, 1)))
    sets = digit_ood_sets(x, seed=0)
    assert tuple(sets) == DIGIT_SETS
    for v in sets.values():
        assert v.shape == x.shape and v.dtype == np.float32
        np.testing.assert_allclose(quantize(v), v)  # on the 8-bit grid
    const = sets["constant"].reshape(20, -1)
    assert np.all(const == const[:, :1]) and np.std(const[:, 0]) > 0.3
    assert abs(np.mean(sets["uniform_noise"])) < 0.1 and np.std(sets["uniform_noise"]) > 0.5
    np.testing.assert_allclose(sets["inverted"], -x)
    np.testing.assert_allclose(sets["rotated_90"][0, :, :, 0], np.rot90(x[0, :, :, 0]))
    img = np.arange(16.0).reshape(1, 4, 4, 1)
    right = shift_images(img, np.array([3]), pixels=2)[0, :, :, 0]
    np.testing.assert_allclose(right[:, 2:], img[0, :, :2, 0])
    assert np.all(right[:, :2] == -1)
    up = shift_images(img, np.array([0]), pixels=2)[0, :, :, 0]
    np.testing.assert_allclose(up[:2], img[0, 2:, :, 0])
    assert np.all(up[2:] == -1)


def test_toy_off_support_points_are_off_the_support(toy_exp):
    data = toy_exp.data.splits(toy_exp.seed)
    sets, info = toy_ood_sets(toy_exp.data, data["train"], data["heldout_b"], 200, 0, 0.01)
    pts = sets["off_support"]
    assert pts.shape == (200, 2)
    assert np.all(toy_exp.data.log_density(pts) < info["log_density_below"])
    lo, hi = np.array(info["box"])
    assert np.all((pts >= lo) & (pts <= hi))


# ---- the stage ----


def test_stage_runs_end_to_end_on_a_tiny_toy(tmp_path):
    """A tiny toy trained briefly in-process; the stage (a subprocess, as DVC runs it) writes
    AUROC/AUPR with intervals for every score and the histograms."""
    from drlx.io import save_model, write_arrays
    from drlx.train.fit import fit

    spec = tiny_toy_spec(
        tmp_path / "tiny.yaml", "tiny", sampler={"num_steps": 5},
        train={"num_steps": 200, "batch_size": 128, "log_every": 100},
        density={"num_chains": 8, "num_annealing_steps": 20, "top_chains": 64},
    )  # fmt: skip
    exp = build(load_spec(spec))
    splits = exp.data.splits(exp.seed)
    data, model = tmp_path / "data.npz", tmp_path / "model.eqx"
    write_arrays(data, **splits)
    state, _ = fit(exp, splits["train"], progress=False)
    save_model(model, (state.ema, state.initializer_ema))
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(ROOT / "stages/ood.py"), "--spec", str(spec), "--data", str(data),
        "--model", str(model), "--metrics", str(out / "ood.json"), "--plot", str(out / "ood.png"),
        "--num-examples", "200", "--num-bound", "30",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "ood.json").read_text())
    assert (out / "ood.png").stat().st_size > 10_000
    assert metrics["num_examples"] == 200 and metrics["num_bound_examples"] == 30
    res = metrics["results"]["off_support"]
    assert set(res) == {"bound", "level0", "levels", "oracle_true_log_density"}
    for score in res.values():
        for name in ("auroc", "aupr_in", "aupr_out"):
            assert 0 <= score[name]["low"] <= score[name]["value"] <= score[name]["high"] <= 1
    # off the support = below the reference split's 1% quantile of the true log-density
    assert res["oracle_true_log_density"]["auroc"]["value"] > 0.98
    assert res["bound"]["num_in"] == 30 and res["levels"]["num_in"] == 200
    assert metrics["best"]["overall"] in {"bound", "level0", "levels"}
    # 200 steps of training already put the off-support points below the data
    assert res["level0"]["auroc"]["value"] > 0.7, res
