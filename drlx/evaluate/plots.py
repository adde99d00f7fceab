"""PNG figures for experiments (matplotlib `Figure` objects, no pyplot / GUI backend needed).

Each function writes one PNG to `path` (parent directories are created) and returns None.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy.special import logsumexp

_LIM = 1.3  # half-width of the square view of 2D data


def _save(fig: Figure, path) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)


def scatter_samples(path, data: np.ndarray, samples: np.ndarray, title: str) -> None:
    """Two scatter panels, held-out data | model samples, on [-1.3, 1.3]^2 with equal aspect.

    Arguments:
        path: output PNG path.
        data: held-out points, shape (N, 2).
        samples: model samples, shape (M, 2).
        title: figure title.
    """
    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    panels = (("held-out data", data), ("model samples", samples))
    for ax, (name, raw) in zip(axes, panels, strict=True):
        pts = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
        size = 2.0 if len(pts) > 2000 else 5.0
        ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.35, linewidths=0, rasterized=True)
        ax.set_xlim(-_LIM, _LIM)
        ax.set_ylim(-_LIM, _LIM)
        ax.set_aspect("equal")
        ax.set_title(f"{name} (n={len(pts)})")
    fig.suptitle(title)
    _save(fig, path)


def _mesh(grid_x: np.ndarray, grid_y: np.ndarray, shape: tuple[int, ...]):
    """Meshgrid arrays of `shape` from 1D axes (len nx, ny -> shape (ny, nx)) or 2D grids."""
    gx, gy = np.asarray(grid_x, dtype=np.float64), np.asarray(grid_y, dtype=np.float64)
    if gx.ndim == 1 and gy.ndim == 1:
        gx, gy = np.meshgrid(gx, gy, indexing="xy")
    if gx.shape != shape or gy.shape != shape:
        raise ValueError(f"grid of shape {gx.shape} does not match densities of shape {shape}")
    return gx, gy


def _spacing(g: np.ndarray) -> float:
    """Grid step of a uniform meshgrid coordinate (varies along one axis, constant on the other)."""
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def density_heatmaps(
    path,
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    log_model: np.ndarray,
    log_true: np.ndarray,
    title: str,
) -> None:
    """Two heat maps, learned model density | true density, on one shared colour scale.

    Each log-density is normalised on the grid to a probability density,
    p = exp(log - logsumexp(log)) / cell_area, so unnormalised model log-densities are fine.

    Arguments:
        path: output PNG path.
        grid_x: x coordinates, 1D (nx,) or a meshgrid array of the same shape as the densities.
        grid_y: y coordinates, 1D (ny,) or a meshgrid array of the same shape as the densities.
        log_model: (unnormalised) model log-density on the grid, shape (ny, nx) for 1D axes.
        log_true: true log-density on the same grid.
        title: figure title.
    """
    log_model = np.asarray(log_model, dtype=np.float64)
    log_true = np.asarray(log_true, dtype=np.float64)
    if log_model.shape != log_true.shape or log_model.ndim != 2:
        raise ValueError(
            f"densities must be 2D and equal-shaped: {log_model.shape}, {log_true.shape}"
        )
    gx, gy = _mesh(grid_x, grid_y, log_model.shape)
    area = _spacing(gx) * _spacing(gy)
    dens = [np.exp(lg - logsumexp(lg)) / area for lg in (log_model, log_true)]
    norm = Normalize(vmin=0.0, vmax=max(float(np.nanmax(d)) for d in dens))
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, d, name in zip(axes, dens, ("model density (level 0)", "true density"), strict=True):
        mesh = ax.pcolormesh(gx, gy, d, norm=norm, cmap="viridis", shading="nearest")
        ax.set_aspect("equal")
        ax.set_title(name)
    fig.colorbar(mesh, ax=axes, shrink=0.85, label="density")
    fig.suptitle(title)
    _save(fig, path)


def loss_curve(path, steps: np.ndarray, losses: np.ndarray, title: str) -> None:
    """Raw loss (thin, faint) with a moving average (window ~ len/20) drawn over it.

    Arguments:
        path: output PNG path.
        steps: training steps, shape (T,).
        losses: loss values, shape (T,).
        title: figure title.
    """
    steps = np.asarray(steps, dtype=np.float64).ravel()
    losses = np.asarray(losses, dtype=np.float64).ravel()
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, lw=0.8, alpha=0.35, color="C0", label="loss")
    window = int(np.clip(len(losses) // 20, 1, 1000))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.8, color="C1", label=f"moving avg ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)


def _tile(images: np.ndarray, ncol: int) -> np.ndarray:
    """Images (N, H, W, C) in [-1, 1] tiled into one [0, 1] canvas with white gaps."""
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, 1|3), got {imgs.shape}")
    n, h, w, c = imgs.shape
    imgs = np.clip((imgs + 1.0) / 2.0, 0.0, 1.0)
    cols = max(1, min(int(ncol), n))
    rows = -(-n // cols)
    pad = 2
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    for k in range(n):
        r, q = divmod(k, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = imgs[k]
    return canvas


def _show(ax, canvas: np.ndarray, title: str) -> None:
    if canvas.shape[-1] == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


def image_grid(path, images: np.ndarray, nrow: int, title: str) -> None:
    """Tile images into one grid picture; pixels mapped from [-1, 1] to [0, 1] and clipped.

    Arguments:
        path: output PNG path.
        images: shape (N, H, W, C) with C in {1, 3}, values in [-1, 1]; C == 1 is grayscale.
        nrow: number of images per row of the grid.
        title: figure title.
    """
    canvas = _tile(images, nrow)
    fig = Figure(figsize=(6.0, 6.0 * canvas.shape[0] / canvas.shape[1] + 0.6))
    _show(fig.add_subplot(1, 1, 1), canvas, "")
    fig.suptitle(title)
    _save(fig, path)


def samples_figure(path, data: np.ndarray, samples: np.ndarray, title: str) -> None:
    """The picture of a sample set: a scatter next to held-out data for 2D points, a grid of
    64 held-out images above 64 model samples for images."""
    if samples.ndim == 2 and samples.shape[1] == 2:
        scatter_samples(path, data, samples, title)
    else:
        n = min(64, len(data), len(samples))
        fig = Figure(figsize=(10.0, 5.6))
        _show(fig.add_subplot(1, 2, 1), _tile(data[:n], 8), f"held-out data (n={n})")
        _show(fig.add_subplot(1, 2, 2), _tile(samples[:n], 8), f"model samples (n={n})")
        fig.suptitle(title)
        _save(fig, path)


def log_density_histogram(path, values: dict[str, np.ndarray], title: str) -> None:
    """Overlaid histograms of a model's log-density on several sets (held-out data, samples)."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    bins = np.linspace(np.percentile(finite, 0.5), np.percentile(finite, 99.5), 60)
    for label, v in values.items():
        ax.hist(v, bins=bins, alpha=0.5, density=True, label=f"{label} (n={len(v)})")
    ax.set_xlabel("level-0 log-density f(y, 0) (unnormalized)")
    ax.set_ylabel("frequency")
    ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def long_run_figure(path, traces: dict[str, np.ndarray], title: str) -> None:
    """Long-run chains (drlx.density.longrun): energy traces, quality vs horizon, samples.

    Top row: per level, the mean and 5-95% / 25-75% bands over chains of the unnormalized
    log p(y | x~) against the step. Middle: the SWD ratio to the held-out floor at each horizon,
    and the same relative to the first horizon (K) with the drift threshold; the mean per-dimension
    std of x_t against the step. Bottom: the chains' x_t at each horizon (rows: levels), over
    the (noised) held-out reference for 2D points, as a 4x4 image grid for images.

    Arguments:
        path: output PNG path.
        traces: the traces returned by drlx.density.longrun.long_run.
        title: figure title.
    """
    steps, levels, horizons = traces["step"], traces["level"], traces["horizon"]
    samples, reference = traces["samples"], traces["reference"]
    n_lv, n_h = len(levels), len(horizons)
    points = samples.ndim == 4 and samples.shape[-1] == 2
    fig = Figure(figsize=(3.2 * max(n_lv, 3, n_h), 6.4 + 3.0 * n_lv), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1.0, 1.0, 1.1 * n_lv])
    for j, ax in enumerate(np.atleast_1d(top.subplots(1, n_lv, squeeze=False)[0])):
        q = traces["log_prob_quantiles"][:, j]
        ax.fill_between(steps, q[:, 0], q[:, -1], alpha=0.2, color="C0", label="5-95%")
        ax.fill_between(steps, q[:, 1], q[:, -2], alpha=0.35, color="C0", label="25-75%")
        ax.plot(steps, traces["log_prob_mean"][:, j], color="C0", lw=1.5, label="mean")
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"level {levels[j]}: log p(y | x~)")
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_q, ax_rel, ax_std = middle.subplots(1, 3)
    swd = traces["swd_ratio"]
    for j, lv in enumerate(levels):
        ax_q.plot(horizons, swd[:, j], "o-", label=f"level {lv}")
        ax_rel.plot(horizons, swd[:, j] / swd[0, j], "o-", label=f"level {lv}")
        ax_std.plot(steps, traces["std"][:, j].mean(-1), label=f"level {lv}")
    ax_q.axhline(1.0, color="k", lw=0.8, ls=":")
    ax_rel.axhline(float(traces["drift_ratio"]), color="C3", lw=1.0, ls="--", label="drift rule")
    for ax, name in (
        (ax_q, "SWD / held-out floor"),
        (ax_rel, "SWD ratio / ratio at K"),
        (ax_std, "mean per-dim std of x_t"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    grid = bottom.subplots(n_lv, n_h, squeeze=False)
    for j, lv in enumerate(levels):
        for i, h in enumerate(horizons):
            ax = grid[j, i]
            if points:
                ref, x = reference[j], samples[i, j]
                ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.25, color="0.5", linewidths=0)
                ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="C0", linewidths=0)
                finite = x[np.all(np.isfinite(x), axis=-1)]
                lim = max(_LIM, float(np.abs(ref).max()) * 1.05)
                if len(finite):
                    lim = max(lim, min(float(np.abs(finite).max()) * 1.05, 10 * lim))
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
                ax.set_aspect("equal")
                ax.set_title(f"level {lv}, step {h}", fontsize=9)
            else:
                _show(ax, _tile(samples[i, j, :16], 4), f"level {lv}, step {h}")
    fig.suptitle(title)
    _save(fig, path)


def class_shares_bars(path, shares: dict[str, np.ndarray], title: str) -> None:
    """Grouped bars of the share of each class (e.g. digits 0-9) in several sets.

    Arguments:
        path: output PNG path.
        shares: {set name: (C,) shares summing to 1}, one bar group per class.
        title: figure title.
    """
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(shares), 1)
    for i, (label, values) in enumerate(shares.items()):
        values = np.asarray(values, dtype=np.float64)
        x = np.arange(len(values)) + (i - (len(shares) - 1) / 2) * width
        ax.bar(x, values, width=width, label=label)
    n_classes = max(len(np.asarray(v)) for v in shares.values())
    ax.axhline(1.0 / n_classes, color="k", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(np.arange(n_classes))
    ax.set_xlabel("class (classifier's most probable)")
    ax.set_ylabel("share")
    ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def guidance_figure(path, rows: list[dict], images: dict[float, np.ndarray], title: str) -> None:
    """Classifier-free guidance: class accuracy against the Frechet distance over its floor, one
    point per strength w (with their 95% intervals), beside 20 samples (two per class) of a few
    strengths."""
    fig = Figure(figsize=(12.0, 5.0), layout="constrained")
    ax, right = fig.subplots(1, 2, width_ratios=[1.0, 1.2])
    acc = np.array([r["class_accuracy"]["mean"] for r in rows])
    acc_ci = np.array([[r["class_accuracy"]["low"], r["class_accuracy"]["high"]] for r in rows])
    fd = np.array([r["fd_over_floor"]["mean"] for r in rows])
    fd_ci = np.array([[r["fd_over_floor"]["low"], r["fd_over_floor"]["high"]] for r in rows])
    ax.errorbar(
        fd, acc, xerr=np.abs(fd_ci.T - fd), yerr=np.abs(acc_ci.T - acc), fmt="o-", capsize=2
    )
    for r, x, y in zip(rows, fd, acc, strict=True):
        ax.annotate(
            f"w={r['w']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("Frechet distance in the classifier's features / held-out floor")
    ax.set_ylabel("share assigned to the requested class")
    shown = [w for w in images if w in (min(images), 1.0, max(images))] or list(images)[:3]
    canvas = np.concatenate([_tile(images[w], 20) for w in shown], axis=0)
    _show(right, canvas, "rows: w = " + ", ".join(f"{w:g}" for w in shown) + " (classes 0-9 twice)")
    fig.suptitle(title)
    _save(fig, path)


def compositions_figure(
    path, samples: dict[str, np.ndarray], shares: dict[str, float], data: np.ndarray, title: str
) -> None:
    """One panel per composition: its samples (a scatter over the held-out data for 2D points,
    a grid of 64 images otherwise), titled with the share inside the target set."""
    names = list(samples)
    fig = Figure(figsize=(4.2 * len(names), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        x = samples[name]
        label = f"{name}: {shares[name]:.3f} in target"
        if x.ndim == 2 and x.shape[1] == 2:
            ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.15, color="grey", linewidths=0)
            ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5, linewidths=0)
            ax.axhline(0, color="k", lw=0.5)
            ax.axvline(0, color="k", lw=0.5)
            ax.set_xlim(-_LIM, _LIM)
            ax.set_ylim(-_LIM, _LIM)
            ax.set_aspect("equal")
            ax.set_title(label, fontsize=9)
        else:
            _show(ax, _tile(x[:64], 8), label)
    fig.suptitle(title)
    _save(fig, path)
