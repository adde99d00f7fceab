"""The digits feature extractor: labels of the split, accuracy, class shares, file format, and
the digits metrics it feeds."""

import subprocess

import jax
import numpy as np
import pytest
from test_stage_errors import PYTHON, REPO

from drlx.builder import build_data
from drlx.data import images
from drlx.evaluate import digits_features as dfe
from drlx.evaluate.feature_metrics import feature_frechet_distance
from drlx.evaluate.uncertainty import draw_indices
from drlx.io import read_arrays, write_arrays
from drlx.spec.data import DigitsData

NUM_HELDOUT = 297


@pytest.fixture(scope="module")
def split():
    pixels, labels = images.load_digits()
    return images.split_by_seed(pixels, NUM_HELDOUT, 0, labels=labels)


@pytest.fixture(scope="module")
def model(split):
    return dfe.train_classifier(split["train"], split["train_labels"], jax.random.key(0))


def test_labels_follow_the_images_and_leave_the_split_unchanged():
    pixels, labels = images.load_digits()
    plain = images.split_by_seed(pixels, NUM_HELDOUT, 3)
    # label each image by its own index: the returned "labels" say which image each row is
    indexed = images.split_by_seed(pixels, NUM_HELDOUT, 3, labels=np.arange(len(pixels)))
    with_labels = images.split_by_seed(pixels, NUM_HELDOUT, 3, labels=labels)
    for name in ("train", "heldout", "heldout_b"):
        np.testing.assert_array_equal(with_labels[name], plain[name])
        rows = indexed[f"{name}_labels"]
        np.testing.assert_array_equal(images.to_model_space(pixels[rows]), plain[name])
        np.testing.assert_array_equal(with_labels[f"{name}_labels"], labels[rows])
    prepared = build_data(DigitsData(kind="digits", num_heldout=NUM_HELDOUT)).splits(3)
    assert set(prepared) == set(with_labels)
    for name, array in with_labels.items():
        np.testing.assert_array_equal(prepared[name], array)


def test_classifier_accuracy_on_held_out_data(model, split):
    for name in ("heldout", "heldout_b"):
        assert dfe.accuracy(model, split[name], split[f"{name}_labels"]) > 0.95


def test_class_shares_of_held_out_data_and_of_only_threes(model, split):
    both = np.concatenate([split["heldout"], split["heldout_b"]])
    labels = np.concatenate([split["heldout_labels"], split["heldout_b_labels"]])
    shares = dfe.class_shares(dfe.features_and_probs(model, both)[1])
    assert shares.sum() == pytest.approx(1.0)
    assert np.max(np.abs(shares - 0.1)) < 0.05  # the 10 classes are about equally frequent
    true_shares = np.bincount(labels, minlength=10) / len(labels)
    assert np.max(np.abs(shares - true_shares)) < 0.03
    threes = both[labels == 3]
    shares = dfe.class_shares(dfe.features_and_probs(model, threes)[1])
    assert shares[3] > 0.9 and shares.sum() == pytest.approx(1.0)  # 3 of 60 taken for 5s


def test_save_and_load_round_trip(model, split, tmp_path):
    path = tmp_path / "features.npz"
    write_arrays(path, **dfe.classifier_to_arrays(model))
    loaded = dfe.classifier_from_arrays(read_arrays(path, *dfe.ARRAY_NAMES), str(path))
    for a, b in zip(
        dfe.features_and_probs(model, split["heldout"]),
        dfe.features_and_probs(loaded, split["heldout"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # the features are scaled to a root-mean-square of 1 on the training images
    train_features = dfe.features_and_probs(loaded, split["train"])[0]
    assert np.sqrt(np.mean(train_features.astype(np.float64) ** 2)) == pytest.approx(1, rel=1e-4)


def test_load_rejects_missing_or_misshapen_arrays(model):
    arrays = dfe.classifier_to_arrays(model)
    with pytest.raises(KeyError, match=r"ext\.npz: missing arrays \['out_bias'\]"):
        dfe.classifier_from_arrays({k: v for k, v in arrays.items() if k != "out_bias"}, "ext.npz")
    bad = arrays | {"hidden1_weight": arrays["hidden1_weight"][:, :-1]}
    with pytest.raises(ValueError, match=r"ext\.npz: array shapes .* do not form"):
        dfe.classifier_from_arrays(bad, "ext.npz")


def test_digits_metrics_over_draws(model, split):
    """Digits of the training split score like the floor (ratio intervals cover 1); shuffled
    pixels, a model of only 3s and loud samples are told apart, with their intervals."""
    heldout, heldout_b = split["heldout"], split["heldout_b"]
    draws = {"num_draws": 5, "size": 120, "kid_subsets": 20}
    same = dfe.digits_metrics(split["train"], heldout, heldout_b, model, **draws)
    assert same["num_draws"] == 5 and same["draw_size"] == 120 and same["selection"] == "disjoint"
    fd = same["fd_digits_features"]
    assert fd["ratio"]["low"] < 1.0 < fd["ratio"]["high"], fd["ratio"]
    assert same["fd_digits_features_ratio"] == fd["ratio"]["mean"]
    assert len(fd["model"]["values"]) == 5 and fd["floor"]["se"] > 0
    # draw 0's value is the Frechet distance of its own rows, recomputed here
    f = lambda x: dfe.features_and_probs(model, x)[0]  # noqa: E731
    indices, _ = draw_indices(len(split["train"]), 2 * len(heldout), 5, 120, 0)
    s0, a0, _ = indices[0]
    pool = np.concatenate([heldout, heldout_b])
    expected = feature_frechet_distance(f(split["train"][s0]), f(pool[a0]))
    assert fd["model"]["values"][0] == pytest.approx(expected, rel=1e-6)
    # the trained features see the gap between digits and a shuffle of their pixels
    rng = np.random.default_rng(0)
    flat = split["train"].reshape(len(split["train"]), -1)
    shuffled = rng.permuted(flat, axis=1).reshape(split["train"].shape)
    bad = dfe.digits_metrics(shuffled, heldout, heldout_b, model, **draws)
    assert bad["fd_digits_features"]["ratio"]["low"] > 10
    assert bad["kid_digits_features"]["excess"]["low"] > 0
    precision = bad["precision_digits_features"]
    assert precision["model"]["high"] < 0.2 < precision["floor"]["low"]
    assert bad["classifier_confidence_samples"] < bad["classifier_confidence_heldout"]
    # a model that makes only 3s: its class shares and recall say so
    threes = split["train"][split["train_labels"] == 3]
    threes = np.resize(threes, (600, 8, 8, 1))
    only3 = dfe.digits_metrics(threes, heldout, heldout_b, model, **draws)
    assert only3["class_share_samples_digit_3"] > 0.9
    assert only3["class_share_digit_3"]["model"]["low"] > 0.9
    tv = only3["class_share_total_variation"]
    assert tv["model"]["low"] > 0.8 > tv["floor"]["high"]
    recall = only3["recall_digits_features"]
    assert recall["model"]["high"] < 0.5 * recall["floor"]["low"]
    # out-of-range samples are clipped, and the share that needed it is reported
    loud = dfe.digits_metrics(split["train"] * 1.5, heldout, heldout_b, model, **draws)
    expected = np.mean(np.abs(split["train"]) > 2 / 3)
    assert loud["samples_clipped_pixel_share"] == pytest.approx(expected)


def test_features_stage_refuses_a_toy_spec(tmp_path):
    result = subprocess.run(
        [
            str(PYTHON),
            "stages/features.py",
            "--spec",
            "specs/eight_gaussians.yaml",
            "--data",
            str(tmp_path / "data.npz"),
            "--out",
            str(tmp_path / "f.npz"),
            "--metrics",
            str(tmp_path / "f.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "specs/eight_gaussians.yaml: data.kind is 'toy2d'" in result.stderr
    assert "digits specs only" in result.stderr
    assert list(tmp_path.iterdir()) == []
