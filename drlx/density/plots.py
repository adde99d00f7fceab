"""PNG figures of the density stage (matplotlib Figure objects, no GUI backend)."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _save(fig: Figure, path) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)


def ais_vs_quadrature(
    path,
    ais: np.ndarray,
    quad: np.ndarray,
    levels: np.ndarray,
    bound_terms: np.ndarray,
    title: str,
    true_terms: np.ndarray | None = None,
) -> None:
    """Toys: AIS against quadrature log Z coloured by level, their difference per level, and the
    held-out bound's mean contribution per level (next to the true process's, when given).

    Arguments:
        path: output PNG.
        ais, quad: log Z of each checked (x~, level) by AIS and by quadrature.
        levels: level of each check.
        bound_terms: (N, T) per-example level terms of the held-out bound.
        title: figure title.
        true_terms: (N, T) the true process's level terms on the same paths.
    """
    fig = Figure(figsize=(13.0, 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    sc = ax1.scatter(quad, ais, c=levels, s=10, cmap="viridis")
    lo, hi = float(min(quad.min(), ais.min())), float(max(quad.max(), ais.max()))
    ax1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax1.set(xlabel="log Z, quadrature", ylabel="log Z, AIS", title="AIS vs quadrature")
    fig.colorbar(sc, ax=ax1, label="level t")
    ax2.scatter(levels + np.linspace(-0.2, 0.2, len(levels)), ais - quad, s=8)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.set(xlabel="level t", ylabel="AIS - quadrature (nats)", title="error per level")
    _level_bars(ax3, bound_terms, "nats")
    if true_terms is not None:
        ax3.plot(np.arange(true_terms.shape[1]), true_terms.mean(0), "r_", ms=22, mew=2,
                 label="true process")  # fmt: skip
        ax3.legend()
    fig.suptitle(title)
    _save(fig, path)


def _level_bars(ax, terms: np.ndarray, unit: str) -> None:
    n = len(terms)
    mean, se = terms.mean(0), terms.std(0, ddof=1) / np.sqrt(max(n - 1, 1))
    ax.bar(np.arange(terms.shape[1]), mean, yerr=se, capsize=3)
    ax.set(xlabel="level t", ylabel=f"mean contribution ({unit})", title="bound per level")


def image_bound(path, bound_terms: np.ndarray, bpd: np.ndarray, title: str) -> None:
    """Images: the bound's mean contribution per level and the histogram of per-example bits/dim.

    Arguments:
        path: output PNG.
        bound_terms: (N, T) per-example level terms (nats).
        bpd: per-example bits/dim.
        title: figure title.
    """
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _level_bars(ax1, bound_terms, "nats")
    ax2.hist(bpd, bins=30)
    ax2.axvline(float(np.mean(bpd)), color="k", lw=1.0)
    ax2.set(xlabel="bits/dim (upper bound)", ylabel="held-out images", title="per example")
    fig.suptitle(title)
    _save(fig, path)
