"""Sample quality against held-out data, and the level-0 density of a model."""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from drlx.energy import ConditionalEBM
from drlx.evaluate.toy_metrics import mmd_rbf, sliced_wasserstein

GRID_LIMIT = 1.3


def sample_quality(
    samples: np.ndarray, heldout: np.ndarray, heldout_b: np.ndarray, num_projections: int
) -> dict[str, float]:
    """Sliced Wasserstein-1 and MMD^2 of model samples against held-out data, next to the same
    numbers for a second held-out draw of equal size (the floor a perfect model would reach)."""
    n = min(len(samples), len(heldout), len(heldout_b))
    flat = lambda a: a[:n].reshape(n, -1)  # noqa: E731  (images: pixels as coordinates)
    x, ref, floor = flat(samples), flat(heldout), flat(heldout_b)
    swd = sliced_wasserstein(x, ref, num_projections)
    swd_floor = sliced_wasserstein(floor, ref, num_projections)
    return {
        "num_samples": n,
        "sliced_wasserstein": swd,
        "sliced_wasserstein_floor": swd_floor,
        "sliced_wasserstein_ratio": swd / swd_floor,
        "mmd2": mmd_rbf(x, ref),
        "mmd2_floor": mmd_rbf(floor, ref),
    }


def level0_log_density(ebm: ConditionalEBM, x: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """The level-0 model's unnormalized log-density f(a_1 x, 0) of data-space points x."""
    out = []
    for start in range(0, len(x), chunk):
        y = ebm.schedule.a_out[1] * jnp.asarray(x[start : start + chunk], jnp.float32)
        out.append(np.asarray(ebm.marginal_log_prob(y, jnp.zeros(len(y), jnp.int32))))
    return np.concatenate(out)


def level0_density_grid(
    ebm: ConditionalEBM, true_log_density: Callable[[np.ndarray], np.ndarray], resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learned level-0 log-density f(y, 0) and the true log-density, on a grid of the plane.

    Returns:
        (axis, log_model, log_true): the grid axis and two (resolution, resolution) arrays.
    """
    axis = np.linspace(-GRID_LIMIT, GRID_LIMIT, resolution)
    points = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    log_model = level0_log_density(ebm, points)
    log_true = true_log_density(points)
    shape = (resolution, resolution)
    return axis, log_model.reshape(shape), log_true.reshape(shape)
