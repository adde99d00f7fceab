"""Numerical checks of drlx.data.toy2d: sampling, normalisation, sampler/density agreement."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from drlx.data import toy2d
from drlx.data.toy2d import TOY_NAMES, sample_toy, toy_has_closed_form, toy_log_density

H = 0.025  # fine grid step; noise stds are >= 1.2 H, so midpoint sums are spectrally accurate
EDGE = 1.6  # the grid covers [-EDGE, EDGE]^2
CELL = 4  # histogram cells are CELL x CELL fine cells (0.1 x 0.1)


@pytest.fixture(scope="module")
def grid_masses():
    """Probability mass of each fine grid cell (midpoint rule), per toy; shape (128, 128)."""
    c = np.arange(-EDGE + H / 2, EDGE, H)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return {
        name: np.exp(toy_log_density(name, pts)).reshape(len(c), len(c)) * H * H
        for name in TOY_NAMES
    }


def test_names_and_closed_form_flags():
    assert TOY_NAMES == ("eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "rings")
    flags = {name: toy_has_closed_form(name) for name in TOY_NAMES}
    assert flags == {
        "eight_gaussians": True,
        "checkerboard": True,
        "two_moons": False,
        "swiss_roll": False,
        "rings": False,
    }


@pytest.mark.parametrize("name", TOY_NAMES)
def test_sampling_deterministic_and_scaled(name):
    a, b, c = sample_toy(name, 5000, 7), sample_toy(name, 5000, 7), sample_toy(name, 5000, 8)
    assert a.shape == (5000, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.all(a == c, axis=1)) < 0.01
    assert np.all(np.isfinite(a))
    std = a.std(axis=0)
    assert np.all(std > 0.25) and np.all(std < 0.7), std
    assert np.all(np.abs(a.mean(axis=0)) < 0.05)
    assert np.mean(np.all(np.abs(a) <= 1.0, axis=1)) > 0.98


def test_bad_name_raises():
    for fn in (
        lambda: sample_toy("moons", 10, 0),
        lambda: toy_log_density("moons", np.zeros((3, 2))),
        lambda: toy_has_closed_form("moons"),
    ):
        with pytest.raises(ValueError, match="two_moons"):
            fn()
    with pytest.raises(ValueError):
        toy_log_density("rings", np.zeros((3, 3)))


@pytest.mark.parametrize("name", TOY_NAMES)
def test_density_integrates_to_one(name, grid_masses):
    assert abs(grid_masses[name].sum() - 1.0) < 1e-3


@pytest.mark.parametrize("name", TOY_NAMES)
def test_histogram_matches_density(name, grid_masses):
    """Total variation between a 400k-sample histogram and the density's cell masses.

    The TV expected from sampling noise alone is 0.5 Σ sqrt(2 p (1 - p) / (pi n)) (about
    0.005-0.011 here); a density with a 25% wrong noise std fails this bound for every toy.
    """
    n = 400_000
    x = sample_toy(name, n, 1)
    hist, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=32, range=[[-EDGE, EDGE]] * 2)
    m = grid_masses[name]
    cells = m.reshape(32, CELL, 32, CELL).sum(axis=(1, 3))
    tv = 0.5 * (np.abs(hist / n - cells).sum() + (1.0 - hist.sum() / n))
    noise = 0.5 * np.sum(np.sqrt(2.0 * cells * (1.0 - cells) / (np.pi * n)))
    assert tv < 1.3 * noise and tv < 0.02, (tv, noise)
    # the same check has power: another toy's density is far off
    other = TOY_NAMES[(TOY_NAMES.index(name) + 1) % len(TOY_NAMES)]
    wrong = grid_masses[other].reshape(32, CELL, 32, CELL).sum(axis=(1, 3))
    assert 0.5 * np.abs(hist / n - wrong).sum() > 0.3


def test_eight_gaussians_matches_scipy_mixture():
    rng = np.random.default_rng(3)
    pts = np.concatenate([rng.uniform(-1.3, 1.3, (200, 2)), sample_toy("eight_gaussians", 50, 4)])
    ang = 2.0 * np.pi * np.arange(8) / 8
    centres = 0.7 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    dens = sum(multivariate_normal(c, 0.05**2 * np.eye(2)).pdf(pts) for c in centres) / 8
    ours = toy_log_density("eight_gaussians", pts)
    ok = dens > 1e-250
    np.testing.assert_allclose(ours[ok], np.log(dens[ok]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_density_matches_monte_carlo(name):
    """log p(x) vs a brute-force Monte Carlo estimate of E_clean N(x; clean, sigma² I)."""
    sigma = toy2d._TOYS[name].sigma
    clean = toy2d._sample_clean(name, 1_000_000, np.random.default_rng(11))
    pts = np.concatenate([sample_toy(name, 5, 12).astype(np.float64), [[0.05, -0.03]]])
    exact = np.exp(toy_log_density(name, pts))
    for x, p in zip(pts, exact, strict=True):
        k = np.exp(-np.sum((clean - x) ** 2, axis=1) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        mc, se = k.mean(), k.std() / np.sqrt(len(k))
        if mc < 1e-3:  # the off-structure point may have ~no mass for some toys
            assert p < 2e-3
            continue
        assert abs(p - mc) < 5 * se and abs(p / mc - 1) < 0.05, (x, p, mc, se)


@pytest.mark.parametrize("name", ["two_moons", "swiss_roll", "rings"])
def test_quadrature_converged(name):
    """The default quadrature agrees with a 6x denser rule to < 1e-6 relative on [-1.5, 1.5]^2."""
    c = np.linspace(-1.5, 1.5, 31)
    pts = np.stack(np.meshgrid(c, c), axis=-1).reshape(-1, 2)
    nodes, log_w = toy2d._curve_nodes(name, 0.5, 12)
    ref = toy2d._mixture_log_density(pts, nodes, log_w, toy2d._TOYS[name].sigma)
    assert np.max(np.abs(np.expm1(toy_log_density(name, pts) - ref))) < 1e-6


@pytest.mark.parametrize("name", TOY_NAMES)
def test_log_density_finite_far_away(name):
    pts = np.array([[5.0, 5.0], [-3.0, 0.0], [0.0, 0.0], [1.2, -1.2]])
    out = toy_log_density(name, pts)
    assert out.dtype == np.float64 and out.shape == (4,)
    assert np.all(np.isfinite(out))
    assert out[0] < -1000 and out[0] < out[3]


@pytest.mark.parametrize("name", TOY_NAMES)
def test_diffused_density_is_the_gaussian_blur_of_the_scaled_toy(name):
    """log q of scale * x + noise_std * eps against an independent computation: the toy's own
    density of scale * x on a fine grid, blurred by the noise (scipy's Gaussian filter)."""
    from scipy.ndimage import gaussian_filter

    scale, noise_std, h = 0.8, 0.1, 0.01
    c = np.arange(-1.6 + h / 2, 1.6, h)
    pts = np.stack([g.ravel() for g in np.meshgrid(c, c, indexing="ij")], axis=1)
    scaled = np.exp(toy_log_density(name, pts / scale)).reshape(len(c), len(c)) / scale**2
    blurred = gaussian_filter(scaled, noise_std / h, mode="constant", truncate=8.0)
    assert abs(blurred.sum() * h * h - 1.0) < 1e-3  # the grid holds the diffused mass
    exact = np.exp(toy_log_density(name, pts, scale, noise_std)).reshape(len(c), len(c))
    mask = exact > 0.01 * exact.max()
    np.testing.assert_allclose(blurred[mask], exact[mask], rtol=2e-3)
    np.testing.assert_allclose(
        toy_log_density(name, pts[:50], 1.0, 0.0), toy_log_density(name, pts[:50]), rtol=0
    )
    with pytest.raises(ValueError, match="scale > 0"):
        toy_log_density(name, pts[:3], 0.0, 0.1)
