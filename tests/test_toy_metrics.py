"""Numerical checks of drlx.evaluate.toy_metrics and smoke tests of drlx.evaluate.plots."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from drlx.data.toy2d import sample_toy, toy_log_density
from drlx.evaluate import plots
from drlx.evaluate.toy_metrics import energy_distance, mmd_rbf, sliced_wasserstein

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sliced_wasserstein_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x[rng.permutation(500)]) == pytest.approx(0.0, abs=1e-12)
    y = rng.normal(size=(700, 3)) * 1.5 + 0.3
    d_xy, d_yx = sliced_wasserstein(x, y, seed=5), sliced_wasserstein(y, x, seed=5)
    assert d_xy > 0.1
    assert d_xy == pytest.approx(d_yx, rel=1e-12)


def test_sliced_wasserstein_equals_1d_wasserstein():
    """For D = 1 every direction is +-1, so the average equals scipy's exact 1D W1."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.gamma(2.0, size=517) - 1.0
    expected = wasserstein_distance(a, b)
    assert sliced_wasserstein(a, b, num_projections=16) == pytest.approx(expected, rel=1e-10)
    got = sliced_wasserstein(a[:, None], b[:, None], num_projections=3, seed=9)
    assert got == pytest.approx(expected, rel=1e-10)


def test_sliced_wasserstein_matches_per_direction_scipy():
    """Unequal sizes in 2D: same directions, scipy's W1 per projection, then averaged."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(211, 2)), rng.uniform(-1, 2, size=(97, 2))
    theta = np.random.default_rng(4).standard_normal((32, 2))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    naive = np.mean([wasserstein_distance(x @ t, y @ t) for t in theta])
    assert sliced_wasserstein(x, y, num_projections=32, seed=4) == pytest.approx(naive, rel=1e-10)


def test_sliced_wasserstein_shifted_gaussians_closed_form():
    """N(0, I) vs N(m, I) in 2D: W1 along theta is |<theta, m>|, so SW1 = E|<theta, m>| = 2|m|/pi.

    With 1000 directions the directional Monte Carlo error is ~1.5% (relative), and the
    empirical-W1 error at n = 3000 is ~0.5%; the tolerance is 5%.
    """
    rng = np.random.default_rng(3)
    m = np.array([1.2, -0.9])
    x, y = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 2)) + m
    got = sliced_wasserstein(x, y, num_projections=1000, seed=1)
    assert got == pytest.approx(2.0 * np.linalg.norm(m) / np.pi, rel=0.05)


def _naive_mmd(x, y, bandwidths):
    def k(u, v):
        return sum(np.exp(-np.sum((u - v) ** 2) / (2 * h**2)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def _naive_energy(x, y):
    def d(u, v):
        return np.sqrt(np.sum((u - v) ** 2))

    n, m = len(x), len(y)
    dxx = sum(d(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    dyy = sum(d(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    dxy = sum(d(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return 2 * dxy - dxx - dyy


def test_mmd_and_energy_match_naive_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)) * 0.2, rng.normal(size=(5, 3)) * 0.3 + 0.1
    bw = (0.05, 0.1, 0.2, 0.5)
    assert mmd_rbf(x, y, bw) == pytest.approx(_naive_mmd(x, y, bw), rel=1e-10, abs=1e-13)
    assert mmd_rbf(x, y, (0.3,)) == pytest.approx(_naive_mmd(x, y, (0.3,)), rel=1e-10)
    assert energy_distance(x, y) == pytest.approx(_naive_energy(x, y), rel=1e-10)


def test_mmd_near_zero_for_same_law_and_positive_for_shift():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 0.3, (1500, 2)), rng.normal(0, 0.3, (1500, 2))
    same = mmd_rbf(a, b)
    shifted = mmd_rbf(a, b + np.array([0.1, 0.0]))
    assert abs(same) < 3e-3
    assert shifted > 1e-2 and shifted > 10 * abs(same)
    # toy samples: same toy, different seeds vs different toys
    t1, t2 = sample_toy("rings", 1500, 0), sample_toy("rings", 1500, 1)
    assert abs(mmd_rbf(t1, t2)) < 3e-3
    assert mmd_rbf(t1, sample_toy("eight_gaussians", 1500, 2)) > 0.05
    assert abs(energy_distance(a, b)) < 2e-3 < energy_distance(a, b + np.array([0.1, 0.0]))


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000


def test_plots_write_pngs(tmp_path):
    data, samples = sample_toy("two_moons", 800, 0), sample_toy("two_moons", 800, 1)
    plots.scatter_samples(tmp_path / "scatter.png", data, samples, "moons")
    _assert_png(tmp_path / "scatter.png")

    c = np.linspace(-1.3, 1.3, 60)
    gx, gy = np.meshgrid(c, c)
    log_true = toy_log_density("two_moons", np.stack([gx.ravel(), gy.ravel()], 1)).reshape(60, 60)
    plots.density_heatmaps(tmp_path / "sub" / "heat.png", c, c, 0.5 * log_true + 3.0, log_true, "h")
    _assert_png(tmp_path / "sub" / "heat.png")
    plots.density_heatmaps(tmp_path / "heat2.png", gx, gy, log_true, log_true, "meshgrid input")
    _assert_png(tmp_path / "heat2.png")

    steps = np.arange(300)
    plots.loss_curve(tmp_path / "loss.png", steps, np.exp(-steps / 80) + 0.1 * np.sin(steps), "l")
    _assert_png(tmp_path / "loss.png")

    rng = np.random.default_rng(0)
    plots.image_grid(tmp_path / "gray.png", rng.uniform(-1.2, 1.2, (10, 8, 8, 1)), 4, "gray")
    _assert_png(tmp_path / "gray.png")
    plots.image_grid(tmp_path / "rgb.png", rng.uniform(-1, 1, (6, 8, 8, 3)), 3, "rgb")
    _assert_png(tmp_path / "rgb.png")
