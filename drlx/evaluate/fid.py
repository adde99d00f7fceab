"""FID, Inception Score and KID of image sets with the FID Inception-v3 (inception.py).

The protocol of the papers (docs/method.md §8.3): pool3 features of 8-bit images, Frechet
distance of their Gaussian fits against the training set's statistics (float64, the trace term
from singular values, the reference's covariance factored once: drlx.evaluate.feature_metrics),
IS over 10 splits from the softmax of the same network's 1008 logits, KID (Binkowski et al.
2018) against a subset of the reference features. Model samples are clipped to [-1, 1] and
quantized to 8 bits first (`to_uint8`), as when they are written to PNG files for the standard
tools; data read from 8-bit files is unchanged by it.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from drlx.evaluate.feature_metrics import FrechetReference, gaussian_statistics, kernel_distance
from drlx.evaluate.inception import InceptionV3
from drlx.evaluate.uncertainty import Estimate
from drlx.progress import progress_bar

_RANGE_TOLERANCE = 1e-3


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels: clip, then round((x + 1) * 127.5).

    Arguments:
        images: (N, H, W, C) floats in (about) [-1, 1].

    Returns:
        (N, H, W, C) uint8.
    """
    x = np.asarray(images, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"images: {int(np.sum(~np.isfinite(x)))} non-finite values")
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def check_images(images, name: str = "images") -> np.ndarray:
    """Validate a batch for the Inception network: (N, H, W, 1 or 3), uint8, or floats in
    [-1, 1] (a small rounding tolerance); returns it as a numpy array."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"{name}: expected images (N, H, W, 3) or (N, H, W, 1), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: expected uint8 or float images, got dtype {x.dtype}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name}: non-finite values")
    if lo < -1.0 - _RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: float images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}] "
            "(clip and quantize model samples with to_uint8; pass [0, 255] pixels as uint8)"
        )
    return x


@eqx.filter_jit
def _forward(model: InceptionV3, images: Array) -> tuple[Array, Array]:
    return model(images)


def inception_outputs(
    model: InceptionV3, images, batch_size: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pool3 features and logits of many images, `batch_size` at a time in one jitted function
    (the last chunk is padded by repeating its last image, so there is one compilation).

    Arguments:
        model: the FID Inception-v3.
        images: (N, H, W, 3 or 1), uint8 or floats in [-1, 1] (see `check_images`).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        (features (N, 2048), logits (N, 1008)), float32 numpy arrays.
    """
    x = check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    batch = min(batch_size, n)
    features, logits = [], []
    with progress_bar(n, "inception", "img", progress) as bar:
        for start in range(0, n, batch):
            chunk = x[start : start + batch]
            size = len(chunk)
            if size < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - size, axis=0)])
            f, lg = _forward(model, jnp.asarray(chunk))
            features.append(np.asarray(f)[:size])
            logits.append(np.asarray(lg)[:size])
            bar.update(size)
    return np.concatenate(features), np.concatenate(logits)


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) with the standard splits, in float64:
    per split, exp(mean_i KL(p(y | x_i) || p(y))), p(y) the split's mean of p(y | x_i); split k
    holds rows [k N // splits, (k + 1) N // splits).

    Arguments:
        logits: (N, classes) logits (softmax taken here), N >= splits.
        splits: number of splits (10 in the standard code).

    Returns:
        (mean, std) over the splits (std with ddof = 0, as the standard code).
    """
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        raise ValueError(f"logits: expected finite (N, classes) values, got shape {z.shape}")
    n = len(z)
    if splits < 1 or n < splits:
        raise ValueError(f"Inception Score: need at least {splits} images for {splits} splits")
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.sum(np.exp(log_p), axis=1, keepdims=True))
    scores = []
    for k in range(splits):
        part = log_p[k * n // splits : (k + 1) * n // splits]
        p = np.exp(part)
        log_marginal = np.log(np.mean(p, axis=0))
        kl = np.sum(p * (part - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def reference_statistics(
    features, num_kid_features: int = 5000, seed: int = 0
) -> dict[str, np.ndarray]:
    """FID reference statistics of a data set's features, and a random subset for KID.

    Arguments:
        features: (N, 2048) pool3 features of the reference images.
        num_kid_features: rows kept for KID (all if fewer), drawn without replacement.
        seed: seed of that draw.

    Returns:
        {"mu" (2048,), "sigma" (2048, 2048) float64, "num_images" (), "kid_features" (M, 2048)}.
    """
    mu, sigma = gaussian_statistics(features)
    rng = np.random.default_rng(seed)
    n = len(features)
    keep = np.sort(rng.choice(n, min(num_kid_features, n), replace=False))
    return {
        "mu": mu,
        "sigma": sigma,
        "num_images": np.array(n, np.int64),
        "kid_features": np.asarray(features, np.float32)[keep],
    }


def sample_metrics(
    features, logits, reference: dict, splits: int = 10, kid_subsets: int = 100,
    kid_subset_size: int = 1000, num_blocks: int = 10,
) -> dict:  # fmt: skip
    """FID against reference statistics, IS of the samples' logits, KID against the reference
    features.

    Arguments:
        features, logits: Inception outputs of the samples (`inception_outputs`).
        reference: `reference_statistics` of the data (mu, sigma, kid_features).
        splits: IS splits.
        kid_subsets, kid_subset_size: KID's subset pairs and their size.
        num_blocks: the samples split into this many disjoint blocks, each block's FID, IS
            and KID computed alone: their mean, standard error and 95% interval measure the
            spread of the numbers between independent draws (of the block size; FID at a
            smaller size is larger, so compare blocks with blocks).

    Returns:
        {"fid", "inception_score", "inception_score_std", "kid", "kid_std", "num_samples"} of
        all the samples (the papers' protocol), and "blocks": {"size", "fid", "inception_score",
        "kid"} with an estimate over the blocks for each.
    """
    fid_reference = FrechetReference(reference["mu"], reference["sigma"])  # one eigh for all
    fid = fid_reference.distance(features)
    is_mean, is_std = inception_score(logits, splits)
    kid, kid_std = kernel_distance(
        features, reference["kid_features"], kid_subsets, kid_subset_size
    )
    size = len(features) // num_blocks
    per_block: dict[str, list[float]] = {"fid": [], "inception_score": [], "kid": []}
    for b in range(num_blocks):
        rows = slice(b * size, (b + 1) * size)
        per_block["fid"].append(fid_reference.distance(features[rows]))
        per_block["inception_score"].append(inception_score(logits[rows], 1)[0])
        per_block["kid"].append(
            kernel_distance(
                features[rows], reference["kid_features"], kid_subsets,
                min(kid_subset_size, size),
            )[0]
        )  # fmt: skip
    blocks = {name: Estimate.of(v).to_json() for name, v in per_block.items()}
    return {
        "fid": fid,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "kid": kid,
        "kid_std": kid_std,
        "num_samples": len(features),
        "blocks": {"num_blocks": num_blocks, "size": size, **blocks},
    }
