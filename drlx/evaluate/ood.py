"""Out-of-distribution detection with a trained EBM: per-example scores, OOD sets, AUROC/AUPR.

Three scores per example x (all oriented so that higher = more in-distribution):

- `bound`: the bound on log p(x_0) of docs/method.md §7.4 for that one example (one forward path,
  log Z_t(x_{t+1}) by AIS for each (example, level), the top level's log Z shared). Images are
  put on the 8-bit grid (`quantize`) and dequantized as in §7.5; the score is minus bits/dim.
  Toys: the bound in nats. The expensive score: T - 1 AIS problems per example.
- `level0`: f_0(a_1 x_0) = `marginal_log_prob` of level 0 (§3.4) at x_0 = abar_0 x + sigmabar_0 eps,
  one draw of the forward process's first step q(x_0 | x) (the marginal level 0 is trained on;
  sigmabar_0 = 0.01 for DRL's T6). Unnormalized: log Z_0 is not subtracted. One network pass.
- `levels`: the vector v(x) of the T conditional log-densities log p(y_t | x_{t+1}) (unnormalized,
  `ConditionalEBM.log_prob` at y_t = a_{t+1} x_t) along one forward path x_0 = x, x_1, ..,
  x_{T-1} (the bound's path construction, a fixed noise draw per example; the top entry is
  f_{T-1}(x_{T-1})), scored by minus its squared Mahalanobis distance to a Gaussian fitted to the
  vectors of a reference split (held-out data not used as the in-distribution test set).

Randomness: `named_key(exp.key("ood"), name)` with name "levels" (the noise of `level0` and of
the `levels` path, tags T and 0..T-2), "ref" (the same for the reference split) and "bound" (the
bound's paths and AIS); example i's draws come from fold_in(key, i) over the concatenation of all
sets, so every example has noise of its own and nothing depends on the chunk size.

External sets (`extra_sets` of `evaluate_ood`: SVHN, CIFAR-100, CelebA at paper scale, loaded by
drlx.data.ood_sets) are scored after, and apart from, the built-in ones, with keys of their own
("levels/NAME", "bound/NAME"; the bound's dequantization seeded by (dequantize_seed,
crc32(NAME))), so adding one leaves every other set's scores as they were. The bound of an
external set is put on the built-in sets' top-level log Z (its own top-level estimate is
swapped for theirs: the top level's log Z is one constant in every example's bound), so all
sets' bounds share it.

Detection metrics treat in-distribution as the positive class: AUROC (roc_auc_score), AUPR-in
(average_precision_score with the in-distribution examples positive) and AUPR-out (the OOD
examples positive, scores negated), each with a 95% percentile interval from a stratified
bootstrap over examples (in and OOD examples resampled separately).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from drlx.data.sources import Toy2D
from drlx.density.bound import BoundResult, bits_per_dim, dequantize, path_bound
from drlx.density.levels import chunk_size, top_level_base
from drlx.energy import ConditionalEBM
from drlx.errors import InputError
from drlx.experiment import Experiment
from drlx.keys import example_keys, named_key, per_example_normal
from drlx.sharding import make_mesh

SCORES = ("bound", "level0", "levels")
SCORE_DOCS = {
    "bound": "per-example bound on log p(x_0) (images: minus bits/dim; toys: nats), AIS log Z",
    "level0": "f_0(a_1 x_0), x_0 = abar_0 x + sigmabar_0 eps (level 0's unnormalized log-density)",
    "levels": "minus the squared Mahalanobis distance of the T per-level conditional "
    "log-densities (one forward path) to a Gaussian fitted on the reference split",
}
DIGIT_SETS = ("uniform_noise", "constant", "inverted", "rotated_90", "shifted_2px")
TOY_SETS = ("off_support",)


class OODSettings(NamedTuple):
    """How much work the OOD evaluation does.

    Attributes:
        num_examples: examples per set for the cheap scores (level0, levels).
        num_bound: the first num_bound of them also get the bound (AIS: the expensive part).
        num_annealing_steps: AIS temperatures per (example, level); None: the spec's (so the
            bound is the density stage's). Fewer bias log Z low and the bound high: on the
            digits 50 instead of the spec's 100 gave 4.78 instead of 5.99 bits/dim held out.
        num_bootstrap: bootstrap resamples for the intervals.
        off_support_quantile: toys: a point is off the support when its true log-density is
            below this quantile of the reference split's.
    """

    num_examples: int = 300
    num_bound: int = 50
    num_annealing_steps: int | None = None
    num_bootstrap: int = 1000
    off_support_quantile: float = 0.01


# ---- inputs ----


def quantize(x: np.ndarray) -> np.ndarray:
    """Images in model space onto the 8-bit grid k / 127.5 - 1, k = 0..255 (clipped), float32."""
    k = np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255)
    return (k / 127.5 - 1.0).astype(np.float32)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def shift_images(x: np.ndarray, directions: np.ndarray, pixels: int = 2, fill: float = -1.0):
    """Shift each image (N, H, W, C) by `pixels` in its direction (0 up, 1 down, 2 left,
    3 right); the uncovered border takes `fill` (the digits' background)."""
    p = pixels
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    h, w = x.shape[1:3]
    # window origin in the padded image: moving the content up means reading from lower rows
    origin = {0: (2 * p, p), 1: (0, p), 2: (p, 2 * p), 3: (p, 0)}
    out = np.empty_like(x)
    for i, d in enumerate(directions):
        r, c = origin[int(d)]
        out[i] = padded[i, r : r + h, c : c + w]
    return out


def digit_ood_sets(heldout: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The digits' OOD sets, each as many images as `heldout` (N, 8, 8, 1) in [-1, 1], all on
    the 8-bit grid: uniform noise in [-1, 1] per pixel; constant images (a uniform constant per
    image); contrast-inverted digits (x -> -x); digits rotated by 90 degrees (anticlockwise);
    digits shifted by two pixels in a random direction (up/down/left/right), filled with -1."""
    n, shape = len(heldout), heldout.shape[1:]
    x = np.asarray(heldout, np.float32)
    rng = _rng(seed, "ood-sets")
    sets = {
        "uniform_noise": rng.uniform(-1.0, 1.0, (n, *shape)),
        "constant": np.broadcast_to(rng.uniform(-1.0, 1.0, (n, 1, 1, 1)), x.shape),
        "inverted": -x,
        "rotated_90": np.rot90(x, k=1, axes=(1, 2)),
        "shifted_2px": shift_images(x, rng.integers(0, 4, n)),
    }
    return {name: quantize(v) for name, v in sets.items()}


def toy_ood_sets(
    source: Toy2D, train: np.ndarray, reference: np.ndarray, n: int, seed: int, quantile: float
) -> tuple[dict[str, np.ndarray], dict]:
    """Points off the toy's support: uniform in the training data's bounding box widened by 10%
    on each side, kept when their true log-density is below the `quantile` of the reference
    split's true log-densities. Returns the set and its definition."""
    lo, hi = train.min(0), train.max(0)
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    threshold = float(np.quantile(source.log_density(reference), quantile))
    rng = _rng(seed, "ood-sets")
    kept, tries = [], 0
    while sum(len(k) for k in kept) < n:
        tries += 1
        if tries > 1000:
            raise RuntimeError("could not draw points off the support (threshold too low)")
        pts = rng.uniform(lo, hi, (max(4 * n, 1024), 2))
        kept.append(pts[source.log_density(pts) < threshold])
    pts = np.concatenate(kept)[:n].astype(np.float32)
    info = {"box": [lo.tolist(), hi.tolist()], "log_density_below": threshold}
    return {"off_support": pts}, info


# ---- scores ----


@eqx.filter_jit
def _cheap_scores(ebm: ConditionalEBM, x: jax.Array, keys: jax.Array):
    """(level0 (N,), per-level vector (N, T)) for a chunk; see the module docstring."""
    sched, num = ebm.schedule, ebm.schedule.num_levels
    n = x.shape[0]
    zero = jnp.zeros((n,), jnp.int32)
    eps0 = per_example_normal(keys, num, x)  # tag T: not one of the path's tags 0..T-2
    x0 = sched.abar[0] * x + sched.sigmabar[0] * eps0
    level0 = ebm.marginal_log_prob(sched.a[1] * x0, zero)
    path, values = [x], []
    for t in range(num - 1):
        eps = per_example_normal(keys, t, x)
        path.append(sched.a[t + 1] * path[-1] + sched.sigma[t + 1] * eps)
        values.append(ebm.log_prob(sched.a[t + 1] * path[t], path[t + 1], zero + t))
    values.append(ebm.log_prob(path[-1], path[-1], zero + num - 1))
    return level0, jnp.stack(values, axis=1)


def cheap_scores(
    ebm: ConditionalEBM, x: np.ndarray, key: jax.Array, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The level-0 log-density (N,) and the per-level conditional log-densities (N, T) of each
    example, in jitted chunks of `chunk` (the last one padded); example i's noise is drawn
    from fold_in(key, i) only, so it does not depend on the chunking."""
    n = len(x)
    keys = example_keys(key, n)
    pad = -n % chunk
    xs = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]).astype(np.float32)
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
    level0, vec = [], []
    for s in range(0, n + pad, chunk):
        a, b = _cheap_scores(ebm, jnp.asarray(xs[s : s + chunk]), keys[s : s + chunk])
        level0.append(np.asarray(a))
        vec.append(np.asarray(b))
    return np.concatenate(level0)[:n], np.concatenate(vec)[:n]


def per_example_bound(
    exp: Experiment,
    ebm: ConditionalEBM,
    x: np.ndarray,
    train: np.ndarray,
    key: jax.Array,
    num_annealing_steps: int | None = None,
    mesh=None,
    dequantize_seed: int | Sequence[int] | None = None,
) -> BoundResult:
    """The bound on log p(x_0) of every example in one `path_bound` call (so the top level's
    log Z is estimated once and shared), with the spec's AIS settings (temperatures optionally
    replaced). Images must be on the 8-bit grid (`quantize`); they are dequantized first, with
    the spec's density.dequantize_seed unless `dequantize_seed` is given."""
    s, runtime = exp.density, exp.runtime
    mesh = make_mesh(runtime.devices) if mesh is None else mesh
    ais = (
        s.ais
        if num_annealing_steps is None
        else s.ais._replace(num_temperatures=num_annealing_steps)
    )
    top = top_level_base(exp.schedule, train)
    seed = s.dequantize_seed if dequantize_seed is None else dequantize_seed
    x0 = x if isinstance(exp.data, Toy2D) else dequantize(x, seed)
    chunk = chunk_size(runtime.sample_batch_size, ais.num_chains, mesh.size)  # as the density's
    return path_bound(ebm, x0, key, ais, top, s.top_chains, chunk, mesh, runtime.progress)


class GaussianFit(NamedTuple):
    """Mean and inverse covariance of reference vectors (`fit_gaussian`)."""

    mean: np.ndarray
    precision: np.ndarray


def fit_gaussian(v: np.ndarray, ridge: float = 1e-6) -> GaussianFit:
    """Mean and precision of reference vectors (N, K); the covariance gets `ridge` times its
    mean diagonal added to the diagonal, so that it is invertible."""
    v = np.asarray(v, np.float64)
    cov = np.atleast_2d(np.cov(v, rowvar=False))
    cov += ridge * np.mean(np.diag(cov)) * np.eye(len(cov))
    return GaussianFit(v.mean(0), np.linalg.inv(cov))


def mahalanobis_sq(v: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """Squared Mahalanobis distance of each row of v (N, K) to the fit."""
    d = np.asarray(v, np.float64) - fit.mean
    return np.einsum("ni,ij,nj->n", d, fit.precision, d)


# ---- detection metrics ----


def _finite(s: np.ndarray) -> np.ndarray:
    """Non-finite scores made rankable: NaN and -inf below every finite score (the least
    in-distribution), +inf above."""
    s = np.asarray(s, np.float64).copy()
    finite = np.isfinite(s)
    lo, hi = (s[finite].min(), s[finite].max()) if finite.any() else (0.0, 0.0)
    span = hi - lo + 1.0
    s[np.isnan(s) | (s == -np.inf)] = lo - span
    s[s == np.inf] = hi + span
    return s


def _curves(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(AUROC, average precision) of scores s for binary labels y (1 positive), as sklearn's
    roc_auc_score and average_precision_score compute them (ties form one threshold; AUROC by
    the trapezoid rule, AP as sum_k (R_k - R_{k-1}) P_k), in plain numpy for the bootstrap."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each threshold
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(tpr) * tps / (last + 1)))
    return auroc, ap


def _point(score_in: np.ndarray, score_out: np.ndarray, exact: bool = False) -> tuple:
    """(AUROC, AUPR-in, AUPR-out); exact: by scikit-learn, else by `_curves` (the same values)."""
    y = np.concatenate([np.ones(len(score_in)), np.zeros(len(score_out))])
    s = np.concatenate([score_in, score_out])
    if exact:
        return (
            float(roc_auc_score(y, s)),
            float(average_precision_score(y, s)),
            float(average_precision_score(1 - y, -s)),
        )
    auroc, ap_in = _curves(s, y)
    return auroc, ap_in, _curves(-s, 1 - y)[1]


def detection_metrics(
    score_in: np.ndarray,
    score_out: np.ndarray,
    num_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """AUROC, AUPR-in and AUPR-out of a score (higher = in-distribution; in-distribution is
    the positive class) with percentile intervals from a stratified bootstrap over examples.

    Returns:
        {"auroc", "aupr_in", "aupr_out"}: each {"value", "low", "high"}; "margin_iqr" (the
        in-distribution scores' 1% quantile minus the OOD scores' 99% quantile, in units of the
        in-distribution interquartile range: it keeps ranking scores once AUROC saturates at 1);
        "num_in", "num_out" and "num_nonfinite" (scores that were NaN or infinite, ranked by
        `_finite`).
    """
    raw_in, raw_out = np.asarray(score_in), np.asarray(score_out)
    nonfinite = int(np.sum(~np.isfinite(raw_in)) + np.sum(~np.isfinite(raw_out)))
    both = _finite(np.concatenate([raw_in, raw_out]))
    s_in, s_out = both[: len(raw_in)], both[len(raw_in) :]
    values = _point(s_in, s_out, exact=True)
    rng = np.random.default_rng(seed)
    boot = np.empty((num_bootstrap, 3))
    for b in range(num_bootstrap):
        i = rng.integers(0, len(s_in), len(s_in))
        o = rng.integers(0, len(s_out), len(s_out))
        boot[b] = _point(s_in[i], s_out[o])
    q = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    out = {
        name: {"value": values[j], "low": float(q[0, j]), "high": float(q[1, j])}
        for j, name in enumerate(("auroc", "aupr_in", "aupr_out"))
    }
    # how far apart beyond AUROC = 1: the in-distribution 1% quantile minus the OOD 99%
    # quantile, over the in-distribution interquartile range (> 0: separated with room to spare)
    q_in = np.quantile(s_in, [0.01, 0.25, 0.75])
    gap = q_in[0] - np.quantile(s_out, 0.99)
    out.update(
        margin_iqr=float(gap / max(q_in[2] - q_in[1], 1e-12)),
        num_in=len(s_in),
        num_out=len(s_out),
        num_nonfinite=nonfinite,
    )
    return out


# ---- the evaluation ----


def _split(values: np.ndarray, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = values[start : start + n]
        start += n
    return out


def ood_scores(
    exp: Experiment,
    ebm: ConditionalEBM,
    sets: Mapping[str, np.ndarray],
    reference: np.ndarray,
    train: np.ndarray,
    settings: OODSettings,
    log: Callable[[str], None] = lambda _: None,
    extra_sets: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Every score of every example of `sets` (the first is the in-distribution test set) and
    of `extra_sets` (external sets, scored apart with keys of their own: module docstring).

    Returns:
        scores[score][set] (higher = in-distribution; `bound` for the first num_bound examples
        of each set only), and extras: the bound in nats / bits per dim per set, the bound's
        top-level log Z and its standard error, the reference fit's size.
    """
    key = exp.key("ood")
    names = list(sets)
    x_all = np.concatenate([np.asarray(sets[k], np.float32) for k in names])
    sizes = {k: len(sets[k]) for k in names}
    chunk = exp.runtime.sample_batch_size
    start = time.perf_counter()
    level0, vec = cheap_scores(ebm, x_all, named_key(key, "levels"), chunk)
    _, ref_vec = cheap_scores(ebm, np.asarray(reference, np.float32), named_key(key, "ref"), chunk)
    fit = fit_gaussian(ref_vec)
    log(f"level0 and levels scores: {time.perf_counter() - start:.1f} s")
    scores = {
        "level0": _split(level0, sizes),
        "levels": _split(-mahalanobis_sq(vec, fit), sizes),
    }
    extra_sets = {} if extra_sets is None else extra_sets
    for name, x in extra_sets.items():
        start = time.perf_counter()
        x = np.asarray(x, np.float32)
        level0_x, vec_x = cheap_scores(ebm, x, named_key(key, f"levels/{name}"), chunk)
        scores["level0"][name] = level0_x
        scores["levels"][name] = -mahalanobis_sq(vec_x, fit)
        log(f"level0 and levels scores of {name}: {time.perf_counter() - start:.1f} s")
    extras: dict = {"num_reference": len(reference)}
    if settings.num_bound > 0:
        start = time.perf_counter()
        bound_sizes = {k: min(settings.num_bound, n) for k, n in sizes.items()}
        xb = np.concatenate([np.asarray(sets[k][: bound_sizes[k]], np.float32) for k in names])
        res = per_example_bound(
            exp, ebm, xb, train, named_key(key, "bound"), settings.num_annealing_steps
        )
        nats = _split(res.per_example, bound_sizes)
        log(f"bound: {time.perf_counter() - start:.1f} s ({len(xb)} examples)")
        for name, x in extra_sets.items():
            start = time.perf_counter()
            xe = np.asarray(x[: settings.num_bound], np.float32)
            seed = [exp.density.dequantize_seed, zlib.crc32(name.encode())]
            res_x = per_example_bound(
                exp, ebm, xe, train, named_key(key, f"bound/{name}"),
                settings.num_annealing_steps, dequantize_seed=seed,
            )  # fmt: skip
            # the top level's term is f_{T-1}(x_{T-1}) - log Z_{T-1}: use the shared estimate
            nats[name] = res_x.per_example + (res_x.top_log_z - res.top_log_z)
            log(f"bound of {name}: {time.perf_counter() - start:.1f} s ({len(xe)} examples)")
        if isinstance(exp.data, Toy2D):
            scores["bound"] = nats
            extras["bound_nats"] = {k: float(np.mean(v)) for k, v in nats.items()}
        else:
            dim = int(np.prod(exp.shape))
            bpd = {k: bits_per_dim(v, dim) for k, v in nats.items()}
            scores["bound"] = {k: -v for k, v in bpd.items()}
            extras["bits_per_dim"] = {k: float(np.mean(v)) for k, v in bpd.items()}
        extras["top_log_z"] = res.top_log_z
        extras["top_log_z_se"] = res.top_log_z_se
        extras["mean_log_z_se"] = float(np.mean(res.log_z_se))
    return scores, extras


def check_extra_sets(
    extra_sets: Mapping[str, np.ndarray], like: np.ndarray, taken: Sequence[str], n: int
) -> dict[str, np.ndarray]:
    """External OOD sets checked against the in-distribution examples `like` (N, *shape): each
    a non-empty finite array of examples of the same shape, named apart from the `taken`
    names; returns their first n examples as float32."""
    out = {}
    for name, x in extra_sets.items():
        if name in taken:
            raise InputError(f"OOD set {name!r}: the name is taken (built-in: {list(taken)})")
        x = np.asarray(x)
        if x.ndim != like.ndim or x.shape[1:] != like.shape[1:] or len(x) == 0:
            want = ", ".join(map(str, like.shape[1:]))
            raise InputError(
                f"OOD set {name!r}: shape {x.shape}, expected (N, {want}) with N > 0 like the "
                "in-distribution data (model space, channels last)"
            )
        x = np.asarray(x[:n], np.float32)
        if not np.isfinite(x).all():
            raise InputError(f"OOD set {name!r}: non-finite values")
        out[name] = x
    return out


def evaluate_ood(
    exp: Experiment,
    ebm: ConditionalEBM,
    data: Mapping[str, np.ndarray],
    settings: OODSettings | None = None,
    log: Callable[[str], None] = lambda _: None,
    extra_sets: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The OOD stage's numbers: builds the OOD sets, scores them and the in-distribution test
    set (held-out, first num_examples), fits the `levels` reference on heldout_b, and computes
    AUROC/AUPR of every (set, score).

    Arguments:
        extra_sets: external OOD sets (name -> examples in model space, shaped like the data;
            images quantized to the 8-bit grid here), their first num_examples scored after
            the built-in sets with keys of their own (the built-in sets' numbers do not move).

    Returns:
        The metrics (JSON-ready) and the scores[score][set] arrays (for the histograms).
    """
    settings = OODSettings() if settings is None else settings
    n = settings.num_examples
    heldout = np.asarray(data["heldout"][:n], np.float32)
    reference = np.asarray(data["heldout_b"][:n], np.float32)
    toy = isinstance(exp.data, Toy2D)
    if toy:
        ood, definition = toy_ood_sets(
            exp.data, data["train"], reference, len(heldout), exp.seed,
            settings.off_support_quantile,
        )  # fmt: skip
    else:
        heldout = quantize(heldout)
        reference = quantize(reference)
        ood = digit_ood_sets(heldout, exp.seed)
        definition = {
            "uniform_noise": "uniform in [-1, 1] per pixel",
            "constant": "one uniform constant in [-1, 1] per image",
            "inverted": "x -> -x of the held-out digits",
            "rotated_90": "held-out digits rotated by 90 degrees anticlockwise",
            "shifted_2px": "held-out digits shifted by 2 pixels (random direction), fill -1",
            "grid": "every set quantized to the 8-bit grid k / 127.5 - 1",
        }
    external = check_extra_sets(extra_sets or {}, heldout, ["in_distribution", *ood], n)
    if not toy:
        external = {k: quantize(v) for k, v in external.items()}
    for name, x in external.items():
        definition[name] = f"external set: its first {len(x)} examples (--ood-set)"
    sets = {"in_distribution": heldout, **ood}
    scores, extras = ood_scores(
        exp, ebm, sets, reference, data["train"], settings, log, extra_sets=external
    )
    ood = {**ood, **external}  # every OOD set, the external ones last
    results: dict = {}
    for j, name in enumerate(ood):
        results[name] = {
            score: detection_metrics(
                scores[score]["in_distribution"],
                scores[score][name],
                settings.num_bootstrap,
                seed=exp.seed * 1000 + j,
            )  # fmt: skip
            for score in SCORES
            if score in scores
        }
    if toy:  # the oracle: the true log-density, for reference (not a model score)
        true = {k: exp.data.log_density(v) for k, v in {**sets, **external}.items()}
        for j, name in enumerate(ood):
            results[name]["oracle_true_log_density"] = detection_metrics(
                true["in_distribution"], true[name], settings.num_bootstrap, seed=j
            )
    present = [s for s in SCORES if s in scores]
    auroc = {s: [results[k][s]["auroc"]["value"] for k in ood] for s in present}
    mean_auroc = {s: float(np.mean(v)) for s, v in auroc.items()}
    min_auroc = {s: float(np.min(v)) for s, v in auroc.items()}
    margin = {s: float(np.median([results[k][s]["margin_iqr"] for k in ood])) for s in present}
    rank = {s: (round(mean_auroc[s], 6), round(min_auroc[s], 6), margin[s]) for s in present}
    metrics = {
        "experiment": exp.name,
        "spec_hash": exp.scientific_hash,
        "positive_class": "in-distribution (scores: higher = more in-distribution)",
        "in_distribution": f"heldout[:{len(heldout)}]",
        "reference": f"heldout_b[:{len(reference)}] (the `levels` score's Gaussian fit)",
        "num_examples": len(heldout),
        "num_bound_examples": min(settings.num_bound, len(heldout)),
        "num_bootstrap": settings.num_bootstrap,
        "interval": "95% percentile, stratified bootstrap over examples",
        "scores": {s: SCORE_DOCS[s] for s in present},
        "ood_sets": definition,
        "results": results,
        "best": {
            "per_set": {
                k: max(
                    present,
                    key=lambda s, k=k: (
                        results[k][s]["auroc"]["value"],
                        results[k][s]["margin_iqr"],
                    ),
                )
                for k in ood
            },
            "overall": max(present, key=lambda s: rank[s]),
            "by": "mean AUROC over the OOD sets (ties: the higher minimum, then the higher "
            "median margin_iqr)",
            "mean_auroc": mean_auroc,
            "min_auroc": min_auroc,
            "median_margin_iqr": margin,
        },
        **extras,
    }
    return metrics, scores


def ood_histograms(path, scores: Mapping[str, Mapping[str, np.ndarray]], metrics: dict, title: str):
    """One panel per (score, OOD set): histograms of the in-distribution scores and the set's,
    on bins spanning the 1st to 99th percentile of both (values beyond go to the edge bins)."""
    names = [k for k in next(iter(scores.values())) if k != "in_distribution"]
    rows = [s for s in SCORES if s in scores]
    fig = Figure(figsize=(3.0 * len(names) + 0.6, 2.5 * len(rows) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(names), squeeze=False))
    for r, score in enumerate(rows):
        s_in = _finite(scores[score]["in_distribution"])
        for c, name in enumerate(names):
            ax = axes[r, c]
            s_out = _finite(scores[score][name])
            lo, hi = np.quantile(np.concatenate([s_in, s_out]), [0.01, 0.99])
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 41)
            for v, label, colour in ((s_in, "in-distribution", "0.4"), (s_out, "OOD set", "C3")):
                ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.55, color=colour, label=label)
            auroc = metrics["results"][name][score]["auroc"]["value"]
            ax.set_title(f"{name}: AUROC {auroc:.3f}", fontsize=9)
            if c == 0:
                ax.set_ylabel(score)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
    fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
