"""Sample-quality distances between two point clouds in R^D (pure numpy).

- `sliced_wasserstein`: mean over random unit directions of the exact 1D Wasserstein-1
  distance between the projected empirical distributions (sizes may differ).
- `mmd_rbf`: unbiased estimate of MMD² with a sum of Gaussian kernels.
- `energy_distance`: unbiased estimate of the energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'|.

All computations are in float64 and blocked so memory stays bounded for large clouds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

_BLOCK = 1 << 21  # max entries of a pairwise block


def _as_cloud(x: np.ndarray, name: str) -> np.ndarray:
    """(N,) or (N, D) array -> float64 (N, D); needs N >= 1."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1, got {np.shape(x)}")
    return a


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_cloud(x, "x"), _as_cloud(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _wasserstein1_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact W1 between the empirical laws of a[p] (n,) and b[p] (m,), for each row p.

    Uses W1 = ∫ |F(t) - G(t)| dt, with F, G the empirical CDFs, which are piecewise constant
    between the merged, sorted sample values.
    """
    n, m = a.shape[1], b.shape[1]
    vals = np.concatenate([a, b], axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    vals = np.take_along_axis(vals, order, axis=1)
    from_a = order < n
    cdf_gap = np.cumsum(from_a, axis=1) / n - np.cumsum(~from_a, axis=1) / m
    return np.sum(np.abs(cdf_gap[:, :-1]) * np.diff(vals, axis=1), axis=1)


def sliced_wasserstein(
    x: np.ndarray, y: np.ndarray, num_projections: int = 256, seed: int = 0
) -> float:
    """Sliced Wasserstein-1 distance between two point clouds.

    SW1(x, y) = mean over directions theta_p of W1(<theta_p, x>, <theta_p, y>), where the
    theta_p are uniform on the unit sphere (normalised Gaussians from
    `np.random.default_rng(seed)`) and W1 is the exact 1D distance between empirical laws.

    Arguments:
        x: samples, shape (N, D) (or (N,) for D = 1).
        y: samples, shape (M, D) (or (M,)); M may differ from N.
        num_projections: number of random directions.
        seed: seed of the directions.

    Returns:
        The estimate as a Python float (>= 0; 0 for identical clouds).
    """
    a, b = _pair(x, y)
    theta = np.random.default_rng(seed).standard_normal((num_projections, a.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    step = max(1, _BLOCK // (len(a) + len(b)))
    total = 0.0
    for i in range(0, num_projections, step):
        th = theta[i : i + step]
        total += float(np.sum(_wasserstein1_rows(th @ a.T, th @ b.T)))
    return total / num_projections


def _pairwise_sum(
    a: np.ndarray, b: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], skip_diag: bool
) -> float:
    """Σ_{i,j} fn(|a_i - b_j|²), blocked over rows; with skip_diag (a is b) omits i == j."""
    total = 0.0
    bb = np.sum(b**2, axis=1)
    step = max(1, _BLOCK // len(b))
    for i in range(0, len(a), step):
        ab = a[i : i + step]
        sq = np.sum(ab**2, axis=1)[:, None] + bb[None, :] - 2.0 * ab @ b.T
        vals = fn(np.maximum(sq, 0.0))
        if skip_diag:
            rows = np.arange(len(ab))
            vals[rows, rows + i] = 0.0
        total += float(np.sum(vals))
    return total


def _unbiased_discrepancy(a: np.ndarray, b: np.ndarray, fn) -> float:
    """Mean_{i != j} fn(a_i, a_j) + mean_{i != j} fn(b_i, b_j) - 2 mean_{i, j} fn(a_i, b_j)."""
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError("unbiased estimates need at least 2 samples in each cloud")
    kxx = _pairwise_sum(a, a, fn, skip_diag=True) / (n * (n - 1))
    kyy = _pairwise_sum(b, b, fn, skip_diag=True) / (m * (m - 1))
    kxy = _pairwise_sum(a, b, fn, skip_diag=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


def mmd_rbf(
    x: np.ndarray, y: np.ndarray, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5)
) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels.

    With k(u, v) = Σ_h exp(-|u - v|² / (2 h²)) over the bandwidths h,

        MMD²_u = 1/(n(n-1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m-1)) Σ_{i≠j} k(y_i, y_j)
                 - 2/(nm) Σ_{i,j} k(x_i, y_j).

    It is unbiased for MMD², so it can be slightly negative when x and y share a law.

    Arguments:
        x: samples, shape (N, D) (or (N,)), N >= 2.
        y: samples, shape (M, D) (or (M,)), M >= 2.
        bandwidths: kernel length scales h (in data units).

    Returns:
        The estimate as a Python float.
    """
    a, b = _pair(x, y)
    scales = [0.5 / h**2 for h in bandwidths]

    def kernel(sq: np.ndarray) -> np.ndarray:
        return sum(np.exp(-s * sq) for s in scales)

    return _unbiased_discrepancy(a, b, kernel)


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Euclidean norms).

    Computed as 2/(nm) Σ_{i,j} |x_i - y_j| - 1/(n(n-1)) Σ_{i≠j} |x_i - x_j|
    - 1/(m(m-1)) Σ_{i≠j} |y_i - y_j|; zero in expectation when x and y share a law.

    Arguments:
        x: samples, shape (N, D) (or (N,)), N >= 2.
        y: samples, shape (M, D) (or (M,)), M >= 2.

    Returns:
        The estimate as a Python float.
    """
    a, b = _pair(x, y)
    return -_unbiased_discrepancy(a, b, np.sqrt)
