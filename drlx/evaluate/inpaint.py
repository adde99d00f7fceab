"""Inpainting with the trained conditional EBMs (docs/method.md §7.8).

Given an image x and a mask m of its known pixels (1 known, 0 hidden), the hidden pixels are
sampled by progressive generation in which only they move: at every level the known pixels are
those of a forward-process path drawn from x (each level's marginal q(x_t | x)), the chain's
start (the tether, or CDRL's proposal) has its known part replaced by that path's, and the chain
runs on the target with the known coordinates held at the path's values and their gradient set
to zero (`masked_target`). For ULA, MALA and underdamped Langevin, whose steps act coordinate by
coordinate with the same step size and friction, the hidden coordinates then follow the chain of
the conditional of the hidden given the known ones; the known coordinates of the chain's state
drift freely and are discarded. After level 0 (and Tweedie's step when the experiment asks),
the known pixels are set to the truth.

Also here: the four masks of the inpaint stage, the two baselines (the training mean image and the
nearest training image on the visible pixels), the error on the hidden pixels, the classifier's
accuracy on completions, each with a 95% interval over examples, and the PNG grid.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from matplotlib.figure import Figure

from drlx.batch import broadcast_to_example
from drlx.energy import ConditionalEBM
from drlx.evaluate.uncertainty import Estimate
from drlx.experiment import Experiment
from drlx.keys import example_keys, fold_each, named_key, per_example_normal
from drlx.samplers.base import AbstractSampler, Target
from drlx.samplers.progressive import tweedie

MASKS = ("right_half", "bottom_half", "centre_square", "random_half")
MASK_DOCS = {
    "right_half": "the right half of the columns hidden",
    "bottom_half": "the bottom half of the rows hidden",
    "centre_square": "the centre square of half the height and width hidden",
    "random_half": "half of the pixels hidden, chosen at random per image (fixed seed)",
}
BASELINES = ("mean_image", "nearest_neighbour")


class InpaintSettings(NamedTuple):
    """Sizes of the inpaint stage: held-out images (first num_examples of the split),
    completions per image, Gibbs sweeps per level (`inpaint`'s resample) and the levels swept
    (t < resample_levels; None: all)."""

    num_examples: int = 297
    num_completions: int = 3
    resample: int = 1
    resample_levels: int | None = None
    num_shown: int = 6  # images per mask in the PNG grid


# ---- masks ----------------------------------------------------------------------------------


def make_mask(name: str, n: int, shape: tuple[int, ...], key: PRNGKeyArray) -> np.ndarray:
    """n masks of images shaped (H, W, C), float32, 1 on known pixels and 0 on hidden ones
    (all channels of a pixel alike). `key` draws `random_half` (image i from fold_in(key, i));
    the others are fixed: `right_half` hides columns W//2.., `bottom_half` rows H//2..,
    `centre_square` rows and columns H//4 .. H//4 + H//2 - 1 (W likewise)."""
    h, w, c = shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    if name == "right_half":
        hidden = np.broadcast_to(cols >= w // 2, (h, w))
    elif name == "bottom_half":
        hidden = np.broadcast_to(rows >= h // 2, (h, w))
    elif name == "centre_square":
        in_rows = (rows >= h // 4) & (rows < h // 4 + h // 2)
        in_cols = (cols >= w // 4) & (cols < w // 4 + w // 2)
        hidden = in_rows & in_cols
    elif name == "random_half":
        scores = jax.vmap(lambda k: jax.random.uniform(k, (h * w,)))(example_keys(key, n))
        order = np.argsort(np.asarray(scores), axis=1, kind="stable")
        flat = np.zeros((n, h * w), bool)
        np.put_along_axis(flat, order[:, : h * w // 2], True, axis=1)
        hidden = flat.reshape(n, h, w)
    else:
        raise ValueError(f"unknown mask {name!r}; one of {', '.join(MASKS)}")
    hidden = np.broadcast_to(hidden, (n, h, w))
    return np.repeat((~hidden)[..., None], c, axis=-1).astype(np.float32)


# ---- the masked chain -----------------------------------------------------------------------


def masked_target(target: Target, mask: Array, y_known: Array) -> Target:
    """The target of the hidden coordinates given the known ones: y -> target(y_full) with
    y_full = m y_known + (1 - m) y, its gradient multiplied by (1 - m) (zero on known
    coordinates). Its value is log p(y_full), which up to a constant in the hidden coordinates
    is the conditional log-density of the hidden given the known."""
    keep = 1.0 - mask

    def value_and_grad(y):
        values, grad = target(mask * y_known + keep * y)
        return values, keep * grad

    return value_and_grad


def forward_path(schedule, x: Float[Array, " N *D"], keys: PRNGKeyArray) -> Array:
    """A draw of the forward process from x, stacked (T+1, N, *D): x_0 = abar_0 x + sigmabar_0
    eps_0, x_i = a_i x_{i-1} + sigma_i eps_i; eps_i of example j from fold_in(keys[j], i)."""
    rows = lambda v: broadcast_to_example(jnp.full(x.shape[0], v), x)  # noqa: E731
    path = [
        rows(schedule.abar[0]) * x + rows(schedule.sigmabar[0]) * per_example_normal(keys, 0, x)
    ]
    for i in range(1, schedule.num_levels + 1):
        eps = per_example_normal(keys, i, x)
        path.append(rows(schedule.a[i]) * path[-1] + rows(schedule.sigma[i]) * eps)
    return jnp.stack(path)


def inpaint(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    x: Float[Array, " N *D"],
    mask: Float[Array, " N *D"],
    keys: PRNGKeyArray,
    denoise: bool = False,
    resample: int = 1,
    resample_levels: int | None = None,
) -> Float[Array, " N *D"]:
    """Complete the hidden pixels of x (mask 0) given the known ones (mask 1).

    Randomness as in generation (`drlx.samplers.many`): x_T from tag T of each example's key,
    level t's chain from fold_in(key, t); the known pixels' forward path from fold_in(key, T+1);
    sweep r > 0 of level t: its chain from fold_in(k_r, t), its new x_{t+1} from
    fold_in(k_r, T + t), k_r = fold_in(key, T + 1 + r). So with a mask of zeros and one sweep
    this is `generate` from the same keys.

    Arguments:
        ebm: the conditional EBMs.
        sampler: the chain of every level.
        x: the true images (only their known pixels are read).
        mask: 1 on known pixels, 0 on hidden ones, shaped like x.
        keys: one key per example.
        denoise: Tweedie's step after level 0 (the spec's `sampler.tweedie`).
        resample: sweeps per tethered level (docs/method.md §7.8): after each but the last,
            the hidden pixels of x_{t+1} are drawn again from q(x_{t+1} | x_t) and level t is
            sampled again (a Gibbs sweep); 1: none.
        resample_levels: sweep only levels t < resample_levels (None: every level below the
            top).

    Returns:
        The completions: x on known pixels (exactly), samples on the hidden ones.
    """
    s = ebm.schedule
    T = s.num_levels
    path = forward_path(s, x, fold_each(keys, T + 1))
    x_top = per_example_normal(keys, T, x)
    x_top = mask * path[T] + (1.0 - mask) * x_top
    n = x.shape[0]
    rows = lambda v: broadcast_to_example(v, x)  # noqa: E731
    resample_levels = T if resample_levels is None else resample_levels

    def recover_hidden(x_next, t, x_known, level_keys):
        a_out = rows(s.a_out[t + 1])
        y_known = a_out * x_known
        y0 = mask * y_known + (1.0 - mask) * ebm.start(x_next, t, level_keys)
        target = masked_target(ebm.target(x_next, t), mask, y_known)
        y = sampler(target, y0, ebm.step_sq[t], level_keys)
        return mask * x_known + (1.0 - mask) * (y / a_out)

    def one_level(x_next, level_and_known):
        level, x_known, x_next_known = level_and_known
        t = jnp.full((n,), level, jnp.int32)

        def sweep(r, x_t):
            sweep_keys = fold_each(keys, T + 1 + r)
            eps = per_example_normal(fold_each(sweep_keys, T + level), 0, x_t)
            renoised = rows(s.a[t + 1]) * x_t + rows(s.sigma[t + 1]) * eps
            x_next = mask * x_next_known + (1.0 - mask) * renoised
            return recover_hidden(x_next, t, x_known, fold_each(sweep_keys, level))

        x_t = recover_hidden(x_next, t, x_known, fold_each(keys, level))
        sweeps = jnp.where(level < resample_levels, resample, 1)
        return jax.lax.fori_loop(1, sweeps, sweep, x_t), None

    top = jnp.full((n,), T - 1, jnp.int32)  # untethered: nothing to resample
    x_t = recover_hidden(x_top, top, path[T - 1], fold_each(keys, T - 1))
    levels = jnp.arange(T - 2, -1, -1)
    x0, _ = jax.lax.scan(one_level, x_t, (levels, path[levels], path[levels + 1]))
    if denoise:
        x0 = tweedie(ebm, x0)
    return mask * x + (1.0 - mask) * x0


@eqx.filter_jit
def _inpaint_chunk(ebm, sampler, key, index, x, mask, denoise, resample, resample_levels):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    return inpaint(ebm, sampler, x, mask, keys, denoise, resample, resample_levels)


def inpaint_many(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    key: PRNGKeyArray,
    x: np.ndarray,
    mask: np.ndarray,
    chunk: int,
    denoise: bool = False,
    resample: int = 1,
    resample_levels: int | None = None,
) -> np.ndarray:
    """`inpaint` over many rows, `chunk` at a time (the last padded and trimmed); row i uses
    fold_in(key, i) for all its randomness, so it does not depend on the chunk size."""
    out = []
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        rows = np.arange(start, start + chunk)
        rows = np.where(rows < stop, rows, start)  # the last chunk padded with its first row
        index = jnp.arange(start, start + chunk)
        done = _inpaint_chunk(
            ebm, sampler, key, index, jnp.asarray(x[rows]), jnp.asarray(mask[rows]), denoise,
            resample, resample_levels,
        )  # fmt: skip
        out.append(np.asarray(done)[: stop - start])
    return np.concatenate(out)


# ---- baselines and metrics ------------------------------------------------------------------


def _flat(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float64).reshape(len(v), -1)


def mean_image_fill(x: np.ndarray, mask: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Baseline: the hidden pixels of every image filled with the training set's mean image."""
    return mask * x + (1.0 - mask) * np.mean(np.asarray(train, np.float64), axis=0)


def nearest_neighbour_fill(x: np.ndarray, mask: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Baseline: the hidden pixels filled from the training image closest to x on x's known
    pixels (squared distance over them; the first on ties)."""
    xf, mf, tf = _flat(x), _flat(mask), _flat(train)
    # sum_p m_p (x_p - t_p)^2 = sum m x^2 - 2 (m x).t + m.t^2, for every (image, training image)
    dist = (mf * xf**2).sum(1)[:, None] - 2.0 * (mf * xf) @ tf.T + mf @ (tf**2).T
    nearest = np.argmin(dist, axis=1)
    return mask * x + (1.0 - mask) * np.asarray(train, np.float64)[nearest]


def hidden_mse(completion: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per image: the mean squared error over its hidden pixels (mask 0), in the model's pixel
    scale [-1, 1]. Completions may be stacked (N, C, *D) against truth and mask (N, *D)."""
    c = np.asarray(completion, np.float64)
    extra = c.ndim - np.ndim(truth)
    truth = np.expand_dims(np.asarray(truth, np.float64), tuple(range(1, 1 + extra)))
    hidden = 1.0 - np.expand_dims(np.asarray(mask, np.float64), tuple(range(1, 1 + extra)))
    axes = tuple(range(1 + extra, c.ndim))
    return np.sum(hidden * (c - truth) ** 2, axis=axes) / np.sum(hidden, axis=axes)


def clip_to_range(completions: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Completions (N, C, *D) as images are shown: clipped to the data's range [-1, 1], with the
    share of their hidden pixels (mask (N, *D) 0) that lay outside it. The truth lies in that
    box and clipping is the projection onto it, so no pixel's error rises."""
    hidden = np.broadcast_to(np.asarray(mask)[:, None] == 0, completions.shape)
    share = float(np.mean(np.abs(completions[hidden]) > 1.0))
    return np.clip(completions, -1.0, 1.0), share


def summary(values) -> dict:
    """Mean over images with its standard error and 95% t-interval (`Estimate.of`), compactly:
    {"mean", "se", "low", "high", "n"}."""
    e = Estimate.of(values)
    return {"mean": e.mean, "se": e.se, "low": e.low, "high": e.high, "n": e.num_draws}


def compare(model: np.ndarray, baseline: np.ndarray) -> dict:
    """Model minus baseline, per image (paired), with its interval; `model_lower` when the whole
    interval is below 0 (the model's error is lower by more than the uncertainty)."""
    diff = summary(np.asarray(model, np.float64) - np.asarray(baseline, np.float64))
    return {**diff, "model_lower": bool(diff["high"] < 0.0)}


def mask_metrics(
    truth: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    completions: np.ndarray,
    baselines: dict[str, np.ndarray],
    classify: Callable[[np.ndarray], np.ndarray],
) -> dict:
    """The numbers of one mask: the classifier's accuracy against the true label and the error
    on the hidden pixels, of the model's completions (N, C, *D) and of each baseline's (N, *D),
    each a mean over images with its interval; model minus each baseline, paired by image, for
    single completions (their error averaged per image) and for the mean of an image's
    completions (an estimate of the posterior mean, whose error is lower)."""
    n, c = completions.shape[:2]
    mean_mse = hidden_mse(completions.mean(1), truth, mask)
    correct = classify(completions.reshape(n * c, *truth.shape[1:])) == np.repeat(labels, c)
    mse = hidden_mse(completions, truth, mask)  # (N, C)
    accuracy = {"model": summary(correct.reshape(n, c).mean(1))}
    error = {
        "model": summary(mse.mean(1)),
        "model_mean_of_completions": summary(mean_mse),
    }
    versus, versus_mean = {}, {}
    for name, filled in baselines.items():
        accuracy[name] = summary(classify(filled) == labels)
        base = hidden_mse(filled, truth, mask)
        error[name] = summary(base)
        versus[name] = compare(mse.mean(1), base)
        versus_mean[name] = compare(mean_mse, base)
    return {
        "hidden_pixels_per_image": float(np.mean(np.sum(1.0 - _flat(mask), axis=1))),
        "accuracy": accuracy,
        "hidden_mse": error,
        "model_minus_baseline": versus,
        "beats_baselines": all(v["model_lower"] for v in versus.values()),
        "mean_of_completions_minus_baseline": versus_mean,
        "mean_of_completions_beats_baselines": all(v["model_lower"] for v in versus_mean.values()),
    }


def _balanced_chunk(rows: int, most: int) -> int:
    """The chunk size that splits `rows` into as few calls of at most `most` as possible with
    the least padding."""
    calls = -(-rows // max(1, most))
    return -(-rows // calls)


def evaluate_inpainting(
    exp: Experiment,
    ebm: ConditionalEBM,
    data: dict[str, np.ndarray],
    classify: Callable[[np.ndarray], np.ndarray],
    settings: InpaintSettings | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Inpaint the first `num_examples` held-out images under every mask of MASKS,
    `num_completions` times each, with the experiment's generation chain (`eval_sampler`, and
    Tweedie's step if `exp.tweedie`); clip them to the data's range [-1, 1] (as images are shown
    and as the classifier reads samples everywhere else; the truth lies in that box, so clipping
    never raises a pixel's error) and score them and the baselines (`mask_metrics`).

    Randomness: the stream exp.key("inpaint"); the random mask from its named key
    "random_half", the chains of mask M from its named key M, row i * C + c (image i,
    completion c) from fold_in of that key with the row's index.

    Arguments:
        exp: the experiment.
        ebm: its conditional EBMs (EMA weights).
        data: "train", "heldout" and "heldout_labels" (the prepare stage's arrays).
        classify: images -> predicted classes (the digits classifier's argmax).
        settings: sizes.
        log: progress lines.

    Returns:
        The metrics (per mask, and the classifier's accuracy on the true images) and, per mask,
        the rows of the picture (`num_shown`, 2 + C, *D): masked input, completions, truth.
    """
    settings = InpaintSettings() if settings is None else settings
    n, c = min(settings.num_examples, len(data["heldout"])), settings.num_completions
    x = np.asarray(data["heldout"][:n], np.float32)
    labels = np.asarray(data["heldout_labels"][:n])
    train = np.asarray(data["train"], np.float32)
    root = exp.key("inpaint")
    chunk = _balanced_chunk(n * c, exp.runtime.sample_batch_size)
    metrics: dict = {
        "num_examples": n,
        "num_completions": c,
        "num_chains_per_mask": n * c,
        "sampler": type(exp.eval_sampler).__name__,
        "num_steps_per_level": exp.eval_sampler.num_steps,
        "num_levels": exp.schedule.num_levels,
        "resample": settings.resample,
        "resample_levels": (
            exp.schedule.num_levels - 1
            if settings.resample_levels is None
            else min(settings.resample_levels, exp.schedule.num_levels - 1)
        ),
        "tweedie": bool(exp.tweedie),
        "pixel_scale": "model space [-1, 1]; completions clipped to it",
        "truth_accuracy": summary(classify(x) == labels),
        "masks": {},
    }
    rows = {}
    for name in MASKS:
        start = time.perf_counter()
        mask = make_mask(name, n, x.shape[1:], named_key(root, "random_half"))
        completions = inpaint_many(
            ebm, exp.eval_sampler, named_key(root, name), np.repeat(x, c, 0),
            np.repeat(mask, c, 0), chunk, exp.tweedie, settings.resample,
            settings.resample_levels,
        ).reshape(n, c, *x.shape[1:])  # fmt: skip
        completions, clipped_share = clip_to_range(completions, mask)
        baselines = {
            "mean_image": mean_image_fill(x, mask, train),
            "nearest_neighbour": nearest_neighbour_fill(x, mask, train),
        }
        found = mask_metrics(x, labels, mask, completions, baselines, classify)
        found = {"description": MASK_DOCS[name], **found, "hidden_share_clipped": clipped_share}
        found["wall_time_s"] = time.perf_counter() - start
        metrics["masks"][name] = found
        k = min(settings.num_shown, n)
        masked = np.where(mask[:k] > 0, x[:k], np.nan)[:, None]
        rows[name] = np.concatenate([masked, completions[:k], x[:k, None]], axis=1)
        log(
            f"inpaint {name}: accuracy {found['accuracy']['model']['mean']:.3f}, hidden MSE "
            f"{found['hidden_mse']['model']['mean']:.4f} (mean image "
            f"{found['hidden_mse']['mean_image']['mean']:.4f}, nearest neighbour "
            f"{found['hidden_mse']['nearest_neighbour']['mean']:.4f}), "
            f"{found['wall_time_s']:.1f} s"
        )
    return metrics, rows


# ---- the picture ----------------------------------------------------------------------------

HIDDEN_RGB = (0.85, 0.15, 0.15)  # hidden pixels of the masked input


def _rgb(images: np.ndarray) -> np.ndarray:
    """Images (..., H, W, 1|3) in [-1, 1] as RGB in [0, 1]; NaN pixels (hidden) in HIDDEN_RGB."""
    v = np.asarray(images, np.float64)
    if v.shape[-1] == 1:
        v = np.repeat(v, 3, axis=-1)
    hidden = np.isnan(v).any(axis=-1, keepdims=True)
    v = np.clip((np.nan_to_num(v) + 1.0) / 2.0, 0.0, 1.0)
    return np.where(hidden, np.asarray(HIDDEN_RGB), v)


def _canvas(rows: np.ndarray, gap: int = 1) -> np.ndarray:
    """A (R, K, H, W, C) block of images as one (R (H + gap) + gap, K (W + gap) + gap, C) canvas
    with white gaps between them."""
    r, k, h, w, c = rows.shape
    framed = np.pad(rows, ((0, 0), (0, 0), (gap, 0), (gap, 0), (0, 0)), constant_values=1.0)
    canvas = framed.transpose(0, 2, 1, 3, 4).reshape(r * (h + gap), k * (w + gap), c)
    return np.pad(canvas, ((0, gap), (0, gap), (0, 0)), constant_values=1.0)


def inpainting_figure(path, rows: dict[str, np.ndarray], metrics: dict, title: str) -> None:
    """One panel per mask: each row an image, its masked input (hidden pixels red), its
    completions and the truth; the panel's title gives the mask's accuracy and hidden MSE."""
    fig = Figure(figsize=(3.2 * len(rows), 4.6))
    for i, (name, block) in enumerate(rows.items()):
        ax = fig.add_subplot(1, len(rows), i + 1)
        ax.imshow(_canvas(_rgb(block)), interpolation="nearest")
        found = metrics["masks"][name]
        mse = found["hidden_mse"]
        ax.set_title(
            f"{name}\naccuracy {found['accuracy']['model']['mean']:.2f}, "
            f"hidden MSE {mse['model']['mean']:.3f}\n(mean image "
            f"{mse['mean_image']['mean']:.3f}, nearest {mse['nearest_neighbour']['mean']:.3f})",
            fontsize=9,
        )
        ax.set_xlabel("input | completions | truth", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
