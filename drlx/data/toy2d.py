"""Deterministic 2D toy distributions with exact log-densities (pure numpy/scipy).

Every toy is "a clean point plus isotropic Gaussian noise of std sigma":

- ``eight_gaussians``: clean point = one of 8 centres on a circle (closed form).
- ``checkerboard``: clean point uniform on the 8 dark squares of a 4x4 board (closed form,
  products of normal-CDF differences).
- ``two_moons``, ``swiss_roll``, ``rings``: clean point = c(t) on a curve piece, piece chosen
  by its weight and t uniform on its interval. The density ∫ p(t) N(x; c(t), sigma² I) dt is
  computed by composite Gauss-Legendre quadrature in log-space (panels of arc length
  <= 2 sigma, 8 nodes each, geometrically graded at the ends of open curves); against a 16x
  finer rule its relative error is < 1e-7 everywhere on [-1.5, 1.5]^2.

All toys live mostly in [-1, 1]^2 with per-coordinate std of about 0.45-0.55.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, logsumexp

TOY_NAMES: tuple[str, ...] = ("eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "rings")

_GL_ORDER = 8  # Gauss-Legendre nodes per panel
_GRADE = 10  # geometric refinements at the ends of open curves
_CHUNK = 1 << 20  # max entries of a (points x nodes) block


@dataclass(frozen=True)
class _Curve:
    """A curve piece: c(t) for t ~ Uniform[lo, hi], chosen with probability `weight`."""

    fn: Callable[[np.ndarray], np.ndarray]  # (K,) -> (K, 2)
    lo: float
    hi: float
    weight: float


@dataclass(frozen=True)
class _Toy:
    """Definition of one toy: kind in {"points", "squares", "curves"} and noise std `sigma`."""

    kind: str
    sigma: float
    points: np.ndarray | None = None  # mixture centres, or lower-left corners of squares
    width: float = 0.0  # side of the squares
    curves: tuple[_Curve, ...] = ()


def _circle(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: radius * np.stack([np.cos(t), np.sin(t)], axis=-1)


def _moon(sign: float) -> Callable[[np.ndarray], np.ndarray]:
    # classic moons (cos t, sin t) and (1 - cos t, 0.5 - sin t), centred and scaled by 0.6
    return lambda t: sign * 0.6 * np.stack([np.cos(t) - 0.5, np.sin(t) - 0.25], axis=-1)


def _swiss(t: np.ndarray) -> np.ndarray:
    # 0.065 t (cos t, sin t) minus its mean 0.065 (2, 2 / (3 pi)) under t ~ U[1.5 pi, 4.5 pi]
    spiral = t[:, None] * np.stack([np.cos(t), np.sin(t)], axis=-1)
    return 0.065 * (spiral - np.array([2.0, 2.0 / (3.0 * np.pi)]))


_ANGLES = 2.0 * np.pi * np.arange(8) / 8.0
_BOARD = [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
_TOYS: dict[str, _Toy] = {
    "eight_gaussians": _Toy(
        "points", 0.05, points=0.7 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=-1)
    ),
    "checkerboard": _Toy(
        "squares", 0.03, points=-0.9 + 0.45 * np.array(_BOARD, dtype=np.float64), width=0.45
    ),
    "two_moons": _Toy(
        "curves",
        0.04,
        curves=(_Curve(_moon(1.0), 0.0, np.pi, 0.5), _Curve(_moon(-1.0), 0.0, np.pi, 0.5)),
    ),
    "swiss_roll": _Toy("curves", 0.04, curves=(_Curve(_swiss, 1.5 * np.pi, 4.5 * np.pi, 1.0),)),
    "rings": _Toy(
        "curves",
        0.04,
        curves=tuple(_Curve(_circle(r), 0.0, 2.0 * np.pi, 0.25) for r in (0.2, 0.45, 0.7, 0.95)),
    ),
}


def _get(name: str) -> _Toy:
    if name not in _TOYS:
        raise ValueError(f"unknown toy {name!r}; valid names: {', '.join(TOY_NAMES)}")
    return _TOYS[name]


def toy_has_closed_form(name: str) -> bool:
    """Whether `toy_log_density` is closed form (True) or quadrature-based (False).

    Arguments:
        name: one of `TOY_NAMES`.

    Returns:
        True for eight_gaussians and checkerboard, False for the curve toys.
    """
    return _get(name).kind != "curves"


def _sample_clean(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n noise-free points (float64, (n, 2)) of toy `name`; noise is added by the caller."""
    toy = _get(name)
    if toy.kind == "points":
        return toy.points[rng.integers(len(toy.points), size=n)]
    if toy.kind == "squares":
        corner = toy.points[rng.integers(len(toy.points), size=n)]
        return corner + toy.width * rng.random((n, 2))
    probs = np.array([c.weight for c in toy.curves])
    piece = rng.choice(len(toy.curves), size=n, p=probs / probs.sum())
    u = rng.random(n)
    out = np.empty((n, 2))
    for j, c in enumerate(toy.curves):
        mask = piece == j
        out[mask] = c.fn(c.lo + (c.hi - c.lo) * u[mask])
    return out


def sample_toy(name: str, n: int, seed: int) -> np.ndarray:
    """Draw n points from toy `name`, deterministically from `np.random.default_rng(seed)`.

    Arguments:
        name: one of `TOY_NAMES` (anything else raises ValueError).
        n: number of points.
        seed: seed of the numpy generator; the same seed gives the same array.

    Returns:
        float32 array of shape (n, 2).
    """
    toy = _get(name)
    rng = np.random.default_rng(seed)
    clean = _sample_clean(name, n, rng)
    return (clean + toy.sigma * rng.standard_normal((n, 2))).astype(np.float32)


def _mixture_log_density(x: np.ndarray, means: np.ndarray, log_w: np.ndarray, sigma: float):
    """log Σ_k w_k N(x; means_k, sigma² I) for x (M, 2), in chunks of points."""
    out = np.empty(len(x))
    step = max(1, _CHUNK // len(means))
    log_norm = -np.log(2.0 * np.pi * sigma**2)
    mm = np.sum(means**2, axis=1)
    for i in range(0, len(x), step):
        xb = x[i : i + step]
        a = xb @ means.T  # a <- log w - |x - mu|² / (2 sigma²), built in place
        a *= 2.0
        a -= np.sum(xb**2, axis=1)[:, None] + mm[None, :]
        np.minimum(a, 0.0, out=a)
        a *= 0.5 / sigma**2
        a += log_w
        top = a.max(axis=1, keepdims=True)
        a -= top
        np.exp(a, out=a)
        out[i : i + step] = top[:, 0] + np.log(a.sum(axis=1))
    return out + log_norm


def _log_cdf_diff(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Stable log(Phi(hi) - Phi(lo)) for hi > lo (reflects to the lower tail when lo > 0)."""
    flip = lo > 0
    a, b = np.where(flip, -lo, hi), np.where(flip, -hi, lo)
    la, lb = log_ndtr(a), log_ndtr(b)
    return la + np.log1p(-np.exp(lb - la))


@functools.lru_cache(maxsize=32)
def _curve_nodes(name: str, panel: float = 2.0, order: int = _GL_ORDER):
    """Quadrature nodes (K, 2) and log-weights (K,) of a curve toy; panels <= panel*sigma long."""
    toy = _get(name)
    gx, gw = np.polynomial.legendre.leggauss(order)
    total = sum(c.weight for c in toy.curves)
    nodes, log_w = [], []
    for c in toy.curves:
        t = np.linspace(c.lo, c.hi, 4097)
        speed = np.max(np.linalg.norm(np.diff(c.fn(t), axis=0), axis=1)) / (t[1] - t[0])
        n_pan = int(np.ceil(speed * (c.hi - c.lo) / (panel * toy.sigma)))
        edges = np.linspace(c.lo, c.hi, n_pan + 1)
        if np.linalg.norm(np.diff(c.fn(np.array([c.lo, c.hi])), axis=0)) > 1e-9:
            # open curve: grade the end panels geometrically, since beyond an end point the
            # integrand decays like exp(-d * s / sigma²), much faster than on the curve itself
            grade = (edges[1] - edges[0]) * 0.5 ** np.arange(_GRADE, 0, -1)
            edges = np.concatenate([[c.lo], c.lo + grade, edges[1:-1], c.hi - grade[::-1], [c.hi]])
        half = 0.5 * (edges[1:] - edges[:-1])[:, None]
        ts = (0.5 * (edges[1:] + edges[:-1])[:, None] + half * gx[None, :]).ravel()
        ws = (half * gw[None, :]).ravel() * (c.weight / total) / (c.hi - c.lo)
        nodes.append(c.fn(ts))
        log_w.append(np.log(ws))
    return np.concatenate(nodes), np.concatenate(log_w)


def toy_noise_std(name: str) -> float:
    """The std of the isotropic Gaussian noise around each clean point of a toy."""
    return float(_get(name).sigma)


def toy_log_density(
    name: str, points: np.ndarray, scale: float = 1.0, noise_std: float = 0.0
) -> np.ndarray:
    """Exact log-density of the distribution `sample_toy(name, ...)` draws from, or of that
    distribution diffused: of scale * x + noise_std * eps with x from the toy and eps ~ N(0, I).

    The toy is a clean point c plus N(0, sigma² I), so its diffused version is scale * c plus
    N(0, (scale² sigma² + noise_std²) I): the same closed form (or quadrature) with the clean
    points scaled and a wider noise.

    Arguments:
        name: one of `TOY_NAMES`.
        points: array of shape (M, 2).
        scale: the contraction of the data (abar of a diffusion level; > 0).
        noise_std: the std of the Gaussian noise added after it (sigmabar; >= 0).

    Returns:
        float64 array of shape (M,): closed form for eight_gaussians/checkerboard, quadrature
        (relative error << 1e-4) for the curve toys.
    """
    toy = _get(name)
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"points must have shape (M, 2), got {x.shape}")
    if not scale > 0 or not noise_std >= 0:
        raise ValueError(f"need scale > 0 and noise_std >= 0, got {scale} and {noise_std}")
    std = float(np.hypot(scale * toy.sigma, noise_std))
    if toy.kind == "points":
        log_w = np.full(len(toy.points), -np.log(len(toy.points)))
        return _mixture_log_density(x, scale * toy.points, log_w, std)
    if toy.kind == "squares":
        width = scale * toy.width
        rel = (x[:, None, :] - scale * toy.points[None, :, :]) / std  # (M, K, 2)
        per_dim = _log_cdf_diff(rel, rel - width / std) - np.log(width)
        return logsumexp(per_dim.sum(axis=-1), axis=1) - np.log(len(toy.points))
    # the panels are at most 2 sigma long in data space: 2 scale sigma <= 2 std once scaled
    nodes, log_w = _curve_nodes(name)
    return _mixture_log_density(x, scale * nodes, log_w, std)
