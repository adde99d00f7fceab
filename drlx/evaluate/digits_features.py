"""A feature space for the 8x8 digits, and sample-quality metrics measured in it.

Inception-v3 features mean nothing on 8x8 grey digits, so the digits experiment gets its own
extractor: a small MLP classifier (64 pixels -> 256 -> 64 -> 10 classes, ReLU) trained on the
training split in seconds. Its last hidden layer (64 values after the ReLU), divided by one
constant fixed at training (the root-mean-square of the training images' activations, so that
KID's kernel (x.y / d + 1)^3 sees values of order 1, as with Inception features), is the feature
space; its softmax the class assignment. The numbers computed in it are named for what they
are ("fd_digits_features", not "fid"): they compare only with each other, and with the floor
that a second held-out draw reaches.
"""

import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.data.sources import SPLITS, DataSource, Digits
from drlx.evaluate.feature_metrics import (
    feature_frechet_distance,
    kernel_distance,
    precision_recall,
)
from drlx.evaluate.uncertainty import quality_draws

NUM_CLASSES = 10
NUM_PIXELS = 64
LAYER_NAMES = ("hidden0", "hidden1", "out")
ARRAY_NAMES = (
    *(f"{layer}_{part}" for layer in LAYER_NAMES for part in ("weight", "bias")),
    "feature_scale",
)


class DigitsClassifier(eqx.Module):
    """MLP on the 64 pixels of an 8x8 digit in [-1, 1]: two ReLU layers, then class logits."""

    layers: tuple[eqx.nn.Linear, ...]
    feature_scale: Float[Array, ""]  # features = last hidden activations / feature_scale

    def __init__(self, key: PRNGKeyArray, widths: tuple[int, int] = (256, 64)):
        sizes = (NUM_PIXELS, *widths, NUM_CLASSES)
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.feature_scale = jnp.ones((), jnp.float32)

    def hidden(self, x: Float[Array, "n 8 8 1"]) -> Float[Array, "n d"]:
        """Penultimate-layer activations (after the ReLU)."""
        h = x.reshape(len(x), -1)
        for layer in self.layers[:-1]:
            h = jax.nn.relu(h @ layer.weight.T + layer.bias)
        return h

    def features(self, x: Float[Array, "n 8 8 1"]) -> Float[Array, "n d"]:
        """The feature space of the digits metrics: hidden(x) / feature_scale."""
        return self.hidden(x) / self.feature_scale

    def logits(self, x: Float[Array, "n 8 8 1"]) -> Float[Array, "n 10"]:
        out = self.layers[-1]
        return self.hidden(x) @ out.weight.T + out.bias


def _loss(model: DigitsClassifier, x: Array, y: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(model.logits(x), y).mean()


def train_classifier(
    images: Float[np.ndarray, "n 8 8 1"],
    labels: Int[np.ndarray, " n"],
    key: PRNGKeyArray,
    num_epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
) -> DigitsClassifier:
    """Train the classifier by AdamW on mini-batches of shuffled training images.

    Arguments:
        images: training images (N, 8, 8, 1) in [-1, 1].
        labels: their classes (N,) in 0..9.
        key: the randomness of initialisation and shuffling.
        num_epochs: passes over the data.
        batch_size: images per step (the last partial batch of an epoch is dropped).
        learning_rate: AdamW learning rate (constant).
        weight_decay: AdamW decoupled weight decay.

    Returns:
        The trained classifier, its feature_scale set to the root-mean-square of the training
        images' last hidden activations.
    """
    x, y = _check_images(images, "training images"), np.asarray(labels)
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= NUM_CLASSES:
        raise ValueError(f"labels: expected {len(x)} classes in 0..9, got shape {y.shape}")
    init_key, shuffle_key = jax.random.split(key)
    model = DigitsClassifier(init_key)
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    steps = len(x) // batch_size
    x_, y_ = jnp.asarray(x), jnp.asarray(y, jnp.int32)

    @eqx.filter_jit
    def epoch(model, state, key, x_, y_):
        order = jax.random.permutation(key, len(x))[: steps * batch_size]
        order = order.reshape(steps, batch_size)

        def step(carry, rows):
            params, state = carry
            grads = jax.grad(_loss)(eqx.combine(params, static), x_[rows], y_[rows])
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        params, static = eqx.partition(model, eqx.is_array)
        (params, state), _ = jax.lax.scan(step, (params, state), order)
        return eqx.combine(params, static), state

    for e in range(num_epochs):
        model, state = epoch(model, state, jax.random.fold_in(shuffle_key, e), x_, y_)
    rms = jnp.sqrt(jnp.mean(eqx.filter_jit(model.hidden)(x_) ** 2))
    return eqx.tree_at(lambda m: m.feature_scale, model, rms)


def _check_images(images, name: str) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"{name}: expected 8x8 digits of shape (N, 8, 8, 1), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: non-finite pixel values")
    return x


@eqx.filter_jit
def _features_and_probs(model: DigitsClassifier, x: Array) -> tuple[Array, Array]:
    h = model.hidden(x)
    out = model.layers[-1]
    return h / model.feature_scale, jax.nn.softmax(h @ out.weight.T + out.bias, axis=-1)


def features_and_probs(
    model: DigitsClassifier, images: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, 64) and class probabilities (N, 10) of 8x8 images in [-1, 1]."""
    x = _check_images(images, "images")
    parts = [
        _features_and_probs(model, jnp.asarray(x[i : i + chunk])) for i in range(0, len(x), chunk)
    ]
    return tuple(np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(2))


def accuracy(model: DigitsClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose most probable class is their label."""
    _, probs = features_and_probs(model, images)
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def class_shares(probs: np.ndarray) -> np.ndarray:
    """Share of images assigned to each class (argmax of the probabilities), shape (10,)."""
    return np.bincount(np.argmax(probs, axis=1), minlength=NUM_CLASSES) / len(probs)


def classifier_to_arrays(model: DigitsClassifier) -> dict[str, np.ndarray]:
    """The classifier's weights as named plain arrays (for drlx.io.write_arrays: no pickle)."""
    arrays = {
        f"{name}_{part}": np.asarray(getattr(layer, part))
        for name, layer in zip(LAYER_NAMES, model.layers, strict=True)
        for part in ("weight", "bias")
    }
    return arrays | {"feature_scale": np.asarray(model.feature_scale)}


def classifier_from_arrays(arrays: dict[str, np.ndarray], where: str) -> DigitsClassifier:
    """Rebuild a classifier from `classifier_to_arrays` output, widths read from the shapes.

    Arguments:
        arrays: the named arrays (as drlx.io.read_arrays(path, *ARRAY_NAMES) returns them).
        where: the file they came from, for error messages.

    Returns:
        The classifier.
    """
    missing = [n for n in ARRAY_NAMES if n not in arrays]
    if missing:
        raise KeyError(f"{where}: missing arrays {missing} of a digits feature extractor")
    shapes = {n: np.shape(arrays[n]) for n in ARRAY_NAMES}
    weights = [shapes[f"{n}_weight"] for n in LAYER_NAMES]  # (out, in) each
    ok = all(len(w) == 2 for w in weights)
    if ok:
        sizes = [weights[0][1]] + [w[0] for w in weights]  # 64, hidden, hidden, 10
        ok = sizes[0] == NUM_PIXELS and sizes[-1] == NUM_CLASSES
        ok = ok and all(weights[i + 1][1] == weights[i][0] for i in range(len(weights) - 1))
        biases = [shapes[f"{n}_bias"] for n in LAYER_NAMES]
        ok = ok and all(b == (w[0],) for b, w in zip(biases, weights, strict=True))
        ok = ok and shapes["feature_scale"] == () and float(arrays["feature_scale"]) > 0
    if not ok:
        raise ValueError(
            f"{where}: array shapes {shapes} do not form a 64 -> ... -> 10 MLP with a positive "
            "scalar feature_scale"
        )
    model = DigitsClassifier(jax.random.key(0), (sizes[1], sizes[2]))
    leaves = [jnp.asarray(arrays[n], jnp.float32) for n in ARRAY_NAMES]
    return eqx.tree_at(
        lambda m: (
            [getattr(layer, p) for layer in m.layers for p in ("weight", "bias")]
            + [m.feature_scale]
        ),
        model,
        leaves,
    )


def digits_metrics(
    samples: np.ndarray,
    heldout: np.ndarray,
    heldout_b: np.ndarray,
    extractor: DigitsClassifier,
    num_draws: int,
    size: int | None = None,
    k: int = 3,
    kid_subsets: int = 100,
) -> dict:
    """Frechet distance, KID, precision/recall and class shares in the classifier's feature
    space over repeated draws, each next to its floor (held-out against held-out), with
    standard errors and 95% intervals (`quality_draws`); plus the class shares and the
    classifier's mean confidence (mean largest class probability) on all samples and on the
    held-out set.

    Samples are clipped to [-1, 1] first, as they would be as images; the share of pixel values
    that needed it is reported. Every set of a draw has `size` rows (default: one held-out
    set's size): the Frechet distance and precision/recall depend on it. KID uses subsets of
    size // 2, so that its subsets differ.

    Arguments:
        samples: model samples (M, 8, 8, 1), M >= num_draws * size for independent draws.
        heldout, heldout_b: the two held-out sets (N, 8, 8, 1) in [-1, 1], pooled.
        extractor: the trained digits classifier.
        num_draws: draws behind every number.
        size: rows per set in a draw.
        k: neighbourhood size of precision/recall.
        kid_subsets: number of KID subsets.

    Returns:
        JSON-ready metrics; the draws' estimates under each metric's name.
    """
    raw = _check_images(samples, "samples")
    clipped_share = float(np.mean(np.abs(raw) > 1.0))
    sets = {"samples": np.clip(raw, -1.0, 1.0), "heldout": heldout, "heldout_b": heldout_b}
    rows, probs = {}, {}
    for name, x in sets.items():
        feats, probs[name] = features_and_probs(extractor, x)
        rows[name] = np.concatenate([feats, probs[name]], axis=1)
    dim = rows["samples"].shape[1] - NUM_CLASSES

    def metric(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        fx, fr = x[:, :dim], ref[:, :dim]
        kid, _ = kernel_distance(fx, fr, kid_subsets, max(2, len(x) // 2), 0)
        precision, recall = precision_recall(fr, fx, k)
        shares, ref_shares = class_shares(x[:, dim:]), class_shares(ref[:, dim:])
        return {
            "fd_digits_features": feature_frechet_distance(fx, fr),
            "kid_digits_features": kid,
            "precision_digits_features": precision,
            "recall_digits_features": recall,
            "class_share_total_variation": float(0.5 * np.abs(shares - ref_shares).sum()),
            **{f"class_share_digit_{c}": float(v) for c, v in enumerate(shares)},
        }

    sample_rows, pool = rows["samples"], (rows["heldout"], rows["heldout_b"])
    out = quality_draws(metric, sample_rows, *pool, num_draws, size)
    out["samples_clipped_pixel_share"] = clipped_share
    out["fd_digits_features_ratio"] = out["fd_digits_features"]["ratio"]["mean"]
    for name in ("samples", "heldout"):
        shares = class_shares(probs[name])
        out |= {f"class_share_{name}_digit_{c}": float(s) for c, s in enumerate(shares)}
        out[f"classifier_confidence_{name}"] = float(np.mean(np.max(probs[name], axis=1)))
    return out


def class_share_arrays(metrics: dict[str, float]) -> dict[str, np.ndarray]:
    """The class shares of `digits_metrics` output as arrays, for a plot."""
    return {
        label: np.array([metrics[f"class_share_{name}_digit_{c}"] for c in range(NUM_CLASSES)])
        for label, name in (("model samples", "samples"), ("held-out data", "heldout"))
    }


MIN_ACCURACY = 0.95  # below this the feature space is too poor to judge samples by


def require_digits(data: DataSource, where: str, what: str) -> None:
    """Refuse a data source other than the digits (`what` names the refusing stage)."""
    if not isinstance(data, Digits):
        raise ValueError(f"{where}: data.kind is {data.kind!r}; {what} is for digits specs only")


def labelled_split_names() -> list[str]:
    """The arrays of a prepared digits file the feature extractor needs: splits and labels."""
    return [name for split in SPLITS for name in (split, f"{split}_labels")]


def fit_feature_extractor(
    data: dict[str, np.ndarray], key: PRNGKeyArray
) -> tuple[DigitsClassifier, dict]:
    """Train the classifier on the training split; report its accuracy on every split (a
    warning if a held-out accuracy is under MIN_ACCURACY).

    Arguments:
        data: the prepared splits and their labels (`labelled_split_names`).
        key: the randomness of initialisation and shuffling.

    Returns:
        The classifier and its metrics (sizes and accuracies).
    """
    started = time.perf_counter()
    model = train_classifier(data["train"], data["train_labels"], key)
    seconds = time.perf_counter() - started
    scores = {f"{s}_accuracy": accuracy(model, data[s], data[f"{s}_labels"]) for s in SPLITS}
    print(f"digits feature extractor: trained in {seconds:.1f} s, accuracy {scores}")
    if min(scores["heldout_accuracy"], scores["heldout_b_accuracy"]) < MIN_ACCURACY:
        print(f"warning: held-out accuracy below {MIN_ACCURACY}", file=sys.stderr)
    metrics = {
        "num_train": len(data["train"]),
        "feature_dim": int(model.layers[-1].weight.shape[1]),
        **scores,
    }
    return model, metrics
