"""The evaluate engine: sample quality against held-out data over repeated draws, and a picture
of the level-0 density (2D toys: next to the true density; images: where held-out data and
samples fall)."""

import numpy as np

from drlx.data.sources import Toy2D
from drlx.energy import ConditionalEBM
from drlx.evaluate.plots import density_heatmaps, log_density_histogram
from drlx.evaluate.toy import level0_density_grid, level0_log_density
from drlx.evaluate.toy_metrics import mmd_rbf, sliced_wasserstein
from drlx.evaluate.uncertainty import quality_draws
from drlx.experiment import Experiment
from drlx.settings import EvaluateSettings


def pixel_quality(
    samples: np.ndarray, heldout: np.ndarray, heldout_b: np.ndarray, settings: EvaluateSettings
) -> dict:
    """Sliced Wasserstein distance and MMD^2 of the samples in data space (pixels as
    coordinates for images), over repeated draws (`quality_draws`)."""
    flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)  # noqa: E731

    def metric(x, ref):
        swd = sliced_wasserstein(x, ref, settings.num_projections)
        return {"sliced_wasserstein": swd, "mmd2": mmd_rbf(x, ref)}

    x, h, hb = flat(samples), flat(heldout), flat(heldout_b)
    return quality_draws(metric, x, h, hb, settings.num_draws, settings.draw_size)


def evaluate_samples(
    exp: Experiment,
    ebm: ConditionalEBM,
    samples: np.ndarray,
    heldout: np.ndarray,
    heldout_b: np.ndarray,
    plot: str,
) -> dict:
    """Sliced Wasserstein distance and MMD^2 of the samples, each next to its held-out floor,
    with their uncertainty over repeated draws (`pixel_quality`).

    Arguments:
        exp: the experiment.
        ebm: its conditional EBMs (EMA weights).
        samples: model samples x_0.
        heldout, heldout_b: two held-out draws (the reference, and the floor's second draw).
        plot: where to draw the level-0 density (PNG).

    Returns:
        The metrics, with the experiment's name and scientific hash.
    """
    metrics = pixel_quality(samples, heldout, heldout_b, exp.evaluate)
    if isinstance(exp.data, Toy2D):
        axis, log_model, log_true = level0_density_grid(
            ebm, exp.data.log_density, exp.evaluate.heatmap_resolution
        )
        title = f"{exp.name}: learned level-0 vs true density"
        density_heatmaps(plot, axis, axis, log_model, log_true, title)
    else:
        values = {
            name: level0_log_density(ebm, x)
            for name, x in (("held-out data", heldout), ("model samples", samples))
        }
        log_density_histogram(plot, values, f"{exp.name}: level-0 log-density")
    return {"experiment": exp.name, "spec_hash": exp.scientific_hash, **metrics}
