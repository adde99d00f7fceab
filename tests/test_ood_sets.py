"""External OOD sets (drlx/data/ood_sets.py) from tiny synthetic files in the real formats (SVHN's
MATLAB v5 .mat, the CIFAR-100 binary archive and folder, an image folder), their errors, the
OOD evaluation with extra sets (the built-in sets' numbers unchanged), and the ood stage's
--ood-set on a tiny untrained image model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import fast_compile_env, tiny_toy_spec, write_tar
from PIL import Image
from scipy.io import savemat

from drlx.builder import build
from drlx.data import images
from drlx.data.images import DatasetError, DatasetNotFoundError
from drlx.data.ood_sets import (
    load_cifar100_binary,
    load_ood_image_folder,
    load_ood_set,
    load_svhn_mat,
    parse_ood_set,
)
from drlx.errors import InputError
from drlx.evaluate.ood import OODSettings, evaluate_ood
from drlx.io import save_model, write_arrays
from drlx.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
RECORD = 3074
RGB = np.float32([10, 20, 30]) / np.float32(127.5) - np.float32(1.0)  # pixel (0, 0) in model space


def model_space(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def write_svhn(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """A test_32x32.mat as the official one: X uint8 (32, 32, 3, N), y (N, 1) in 1..10;
    returns the images (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    x[:, 0, 0] = [10, 20, 30]  # R, G, B: the channel order is checked
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    savemat(path, {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": y})
    return x


def cifar100_records(n: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """n records (coarse, fine, R plane, G plane, B plane); returns the bytes and the images."""
    rng = np.random.default_rng(seed)
    planes = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    planes[:, 0, 0, 0], planes[:, 1, 0, 0], planes[:, 2, 0, 0] = 10, 20, 30
    labels = np.stack([rng.integers(0, 20, n), rng.integers(0, 100, n)], 1).astype(np.uint8)
    table = np.concatenate([labels, planes.reshape(n, -1)], axis=1)
    return table.tobytes(), planes.transpose(0, 2, 3, 1)


def write_folder(path: Path, n: int, size: int = 32) -> np.ndarray:
    """n lossless PNGs of size x size (sorted names), returns their pixels."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    path.mkdir(parents=True)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(path / f"{i:06d}.png")
    return pixels


# ---- SVHN ----


def test_svhn_reads_exact_pixels_in_model_space_and_the_row_limit(tmp_path):
    x = write_svhn(tmp_path / "test_32x32.mat", 7)
    got = load_svhn_mat(tmp_path / "test_32x32.mat")
    assert got.shape == (7, 32, 32, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, model_space(x))
    np.testing.assert_array_equal(got, images.to_model_space(x))
    assert got.min() >= -1 and got.max() <= 1
    np.testing.assert_array_equal(
        got[:, 0, 0], np.tile(model_space(np.uint8([10, 20, 30])), (7, 1))
    )
    np.testing.assert_array_equal(load_svhn_mat(tmp_path / "test_32x32.mat", num=3), got[:3])
    assert len(load_svhn_mat(tmp_path / "test_32x32.mat", num=100)) == 7
    np.testing.assert_array_equal(load_ood_set("svhn", tmp_path / "test_32x32.mat", 2), got[:2])


def test_svhn_missing_and_malformed_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data/raw/svhn/test_32x32.mat"):
        load_svhn_mat(tmp_path / "nope.mat")
    bad = tmp_path / "bad.mat"
    cases = {
        "X is float64": {"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1))},
        r"shape \(32, 32, 2\)": {"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((1, 1))},
        r"shape \(28, 28, 3, 2\)": {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))},
        r"y has shape \(3, 1\)": {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))},
        r"outside 1..10": {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.zeros((2, 1))},
        r"no variable\(s\) \['y'\]": {"X": np.zeros((32, 32, 3, 2), np.uint8)},
    }
    for message, content in cases.items():
        savemat(bad, content)
        with pytest.raises(DatasetError, match=message):
            load_svhn_mat(bad)
    bad.write_bytes(b"MATLAB 5.0 MAT-file, truncated" + b"\0" * 40)
    with pytest.raises(DatasetError, match="bad.mat"):
        load_svhn_mat(bad)
    bad.write_bytes(b"\x89PNG not a mat file at all")
    with pytest.raises(DatasetError, match="bad.mat"):
        load_svhn_mat(bad)


# ---- CIFAR-100 ----


def test_cifar100_archive_and_folder_read_exact_pixels_and_the_row_limit(tmp_path):
    data, x = cifar100_records(6)
    train, _ = cifar100_records(4, seed=1)
    archive = write_tar(
        tmp_path / "cifar-100-binary.tar.gz",
        {"cifar-100-binary/train.bin": train, "cifar-100-binary/test.bin": data,
         "cifar-100-binary/fine_label_names.txt": b"apple\n"},
    )  # fmt: skip
    got = load_cifar100_binary(archive)
    assert got.shape == (6, 32, 32, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, model_space(x))
    np.testing.assert_array_equal(
        got[:, 0, 0], np.tile(model_space(np.uint8([10, 20, 30])), (6, 1))
    )
    np.testing.assert_array_equal(load_cifar100_binary(archive, num=4), got[:4])
    assert len(load_cifar100_binary(archive, num=50)) == 6
    assert len(load_cifar100_binary(archive, "train")) == 4
    # the extracted folder, at its top or its parent
    folder = tmp_path / "extracted" / "cifar-100-binary"
    folder.mkdir(parents=True)
    (folder / "test.bin").write_bytes(data)
    np.testing.assert_array_equal(load_cifar100_binary(folder, num=2), got[:2])
    np.testing.assert_array_equal(load_cifar100_binary(folder.parent), got)
    np.testing.assert_array_equal(load_ood_set("cifar100", archive, 3), got[:3])


def test_cifar100_missing_and_malformed_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data/raw/cifar100/cifar-100-binary.tar.gz"):
        load_cifar100_binary(tmp_path / "cifar-100-binary.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no test.bin under"):
        load_cifar100_binary(tmp_path / "empty")
    data, _ = cifar100_records(3)
    truncated = write_tar(tmp_path / "t.tar.gz", {"cifar-100-binary/test.bin": data[:-5]})
    with pytest.raises(DatasetError, match=f"positive multiple of {RECORD}.*truncated"):
        load_cifar100_binary(truncated)
    with pytest.raises(DatasetError, match="truncated"):  # the size is checked, num or not
        load_cifar100_binary(truncated, num=1)
    (tmp_path / "empty" / "test.bin").write_bytes(data[: RECORD + 10])
    with pytest.raises(DatasetError, match="truncated"):
        load_cifar100_binary(tmp_path / "empty", num=1)
    evil = write_tar(
        tmp_path / "evil.tar.gz",
        {"cifar-100-binary/test.bin": data, "cifar-100-binary/../../escape.txt": b"x"},
    )
    with pytest.raises(DatasetError, match="unsafe member .*outside the destination"):
        load_cifar100_binary(evil)
    # an absolute name is not the member read (nothing is extracted: records are read in memory)
    absolute = write_tar(tmp_path / "abs.tar.gz", {"/etc/cifar-100-binary/test.bin": data})
    with pytest.raises(DatasetError, match="no regular file cifar-100-binary/test.bin"):
        load_cifar100_binary(absolute)
    cifar10 = write_tar(tmp_path / "c10.tar.gz", {"cifar-10-batches-bin/test_batch.bin": data})
    with pytest.raises(DatasetError, match="no regular file cifar-100-binary/test.bin"):
        load_cifar100_binary(cifar10)
    labels = bytearray(data)
    labels[1] = 100  # a fine label out of range
    wrong = write_tar(tmp_path / "w.tar.gz", {"cifar-100-binary/test.bin": bytes(labels)})
    with pytest.raises(DatasetError, match="not CIFAR-100"):
        load_cifar100_binary(wrong)
    (tmp_path / "plain.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="not a readable .tar.gz"):
        load_cifar100_binary(tmp_path / "plain.tar.gz")


# ---- image folders (CelebA) ----


def test_image_folder_reads_exact_pixels_as_load_image_folder(tmp_path):
    pixels = write_folder(tmp_path / "celeba", 4)
    got = load_ood_image_folder(tmp_path / "celeba", 32)
    np.testing.assert_array_equal(got, model_space(pixels))
    np.testing.assert_array_equal(load_ood_image_folder(tmp_path / "celeba", 32, num=2), got[:2])
    np.testing.assert_array_equal(load_ood_set("image_folder", tmp_path / "celeba", 3), got[:3])
    # non-square JPEGs (CelebA's are 178 x 218): centre crop and resize as load_image_folder
    jpegs = tmp_path / "jpegs" / "sub"
    jpegs.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        pic = rng.integers(0, 256, (54, 44, 3)).astype(np.uint8)
        Image.fromarray(pic).save(jpegs / f"{i}.jpg", quality=95)
    want = model_space(images.load_image_folder(tmp_path / "jpegs", 16))
    np.testing.assert_array_equal(load_ood_image_folder(tmp_path / "jpegs", 16), want)
    np.testing.assert_array_equal(load_ood_image_folder(tmp_path / "jpegs", 16, num=2), want[:2])
    assert want.shape == (3, 16, 16, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="under .*nope"):
        load_ood_image_folder(tmp_path / "nope", 32, num=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images at .*put the images"):
        load_ood_image_folder(tmp_path / "empty", 32, num=3)
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg: cannot read"):
        load_ood_image_folder(tmp_path / "empty", 32, num=3)


def test_parse_ood_set():
    assert parse_ood_set("svhn=svhn:data/raw/svhn/test_32x32.mat") == (
        "svhn", "svhn", "data/raw/svhn/test_32x32.mat",
    )  # fmt: skip
    assert parse_ood_set("c=image_folder:C:/x") == ("c", "image_folder", "C:/x")
    for bad in ("svhn", "svhn=svhn", "=svhn:x", "a=mnist:x", "a=svhn:"):
        with pytest.raises(ValueError, match="NAME=KIND:PATH"):
            parse_ood_set(bad)
    with pytest.raises(ValueError, match="unknown OOD set kind"):
        load_ood_set("mnist", "x")


# ---- the evaluation with extra sets ----


def test_extra_sets_leave_the_built_in_sets_numbers_unchanged(tmp_path):
    """A tiny toy, untrained: every score and metric of the built-in sets is the same with an
    external set added; the external set gets every score; a misshaped or clashing one is
    refused naming it."""
    spec = tiny_toy_spec(
        tmp_path / "toy.yaml", "toy",
        density={"num_chains": 4, "num_annealing_steps": 5, "top_chains": 16},
    )  # fmt: skip
    exp = build(load_spec(spec))
    data = exp.data.splits(exp.seed)
    ebm = exp.ebm(exp.init_network())
    settings = OODSettings(num_examples=40, num_bound=6, num_bootstrap=50)
    base, base_scores = evaluate_ood(exp, ebm, data, settings)
    far = np.random.default_rng(0).normal(0, 5, (50, 2)).astype(np.float32)
    more, more_scores = evaluate_ood(exp, ebm, data, settings, extra_sets={"far": far})
    for score, sets in base_scores.items():
        for name, values in sets.items():
            np.testing.assert_array_equal(more_scores[score][name], values)
    assert more["results"]["off_support"] == base["results"]["off_support"]
    assert more["top_log_z"] == base["top_log_z"]
    assert set(more["results"]["far"]) == {"bound", "level0", "levels", "oracle_true_log_density"}
    assert len(more_scores["level0"]["far"]) == 40 and len(more_scores["bound"]["far"]) == 6
    assert np.isfinite(more_scores["bound"]["far"]).all()
    assert "far" in more["ood_sets"] and "far" in more["best"]["per_set"]
    with pytest.raises(InputError, match=r"'far': shape \(50, 3\), expected \(N, 2\)"):
        evaluate_ood(exp, ebm, data, settings, extra_sets={"far": np.zeros((50, 3))})
    with pytest.raises(InputError, match="'off_support': the name is taken"):
        evaluate_ood(exp, ebm, data, settings, extra_sets={"off_support": far})
    with pytest.raises(InputError, match="'far': non-finite"):
        evaluate_ood(exp, ebm, data, settings, extra_sets={"far": far * np.nan})


# ---- the stage ----


def tiny_image_spec(path: Path) -> Path:
    """The paper's DRL image spec (CIFAR-10 shape) with 3 levels, a tiny network, tiny AIS."""
    spec = {
        "extends": str(ROOT / "specs/bases/drl_image.yaml"),
        "name": "tiny_cifar",
        "data": {"kind": "cifar10"},
        "diffusion": {"num_levels": 3},
        "model": {"width": 8, "blocks_per_resolution": 1, "channel_mults": [1, 2], "embed_dim": 16},
        "sampler": {"num_steps": 2},
        "runtime": {"progress": False, "sample_batch_size": 8, "devices": 1},
        "density": {"num_chains": 2, "num_annealing_steps": 3, "top_chains": 4},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_stage_scores_external_sets(tmp_path):
    """The ood stage (a subprocess, as DVC runs it) on an untrained tiny CIFAR-shaped model with
    an SVHN .mat, a CIFAR-100 archive and an image folder: AUROC/AUPR of each, its definition,
    its histograms; a bad --ood-set is a known failure (exit 2, `error:`)."""
    spec = tiny_image_spec(tmp_path / "tiny.yaml")
    exp = build(load_spec(spec))
    rng = np.random.default_rng(0)
    split = lambda n: images.to_model_space(rng.integers(0, 256, (n, 32, 32, 3), np.uint8))  # noqa: E731
    data, model = tmp_path / "data.npz", tmp_path / "model.eqx"
    write_arrays(data, train=split(16), heldout=split(8), heldout_b=split(8))
    save_model(model, (exp.init_network(), exp.init_initializer()))
    write_svhn(tmp_path / "test_32x32.mat", 9)
    write_tar(tmp_path / "c100.tar.gz", {"cifar-100-binary/test.bin": cifar100_records(5)[0]})
    write_folder(tmp_path / "celeba", 3, size=40)
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(ROOT / "stages/ood.py"), "--spec", str(spec), "--data", str(data),
        "--model", str(model), "--metrics", str(out / "ood.json"), "--plot", str(out / "ood.png"),
        "--num-examples", "6", "--num-bound", "2",
        "--ood-set", f"svhn=svhn:{tmp_path / 'test_32x32.mat'}",
        "--ood-set", f"cifar100=cifar100:{tmp_path / 'c100.tar.gz'}",
        "--ood-set", f"celeba=image_folder:{tmp_path / 'celeba'}",
    ]  # fmt: skip
    env = fast_compile_env()  # tests/helpers.py: compiling is most of this stage's time
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "ood.json").read_text())
    assert metrics["external_sets"] == {
        "svhn": {"kind": "svhn", "path": str(tmp_path / "test_32x32.mat"), "num_examples": 6},
        "cifar100": {"kind": "cifar100", "path": str(tmp_path / "c100.tar.gz"), "num_examples": 5},
        "celeba": {"kind": "image_folder", "path": str(tmp_path / "celeba"), "num_examples": 3},
    }
    for name, n in (("svhn", 6), ("cifar100", 5), ("celeba", 3)):
        res = metrics["results"][name]
        assert set(res) == {"bound", "level0", "levels"}
        assert res["level0"]["num_out"] == n and res["bound"]["num_out"] == 2
        for score in res.values():
            assert 0 <= score["auroc"]["low"] <= score["auroc"]["value"] <= score["auroc"]["high"]
        assert name in metrics["ood_sets"] and name in metrics["bits_per_dim"]
    assert "uniform_noise" in metrics["results"]  # the built-in sets are still there
    assert (out / "ood.png").stat().st_size > 10_000
    bad = [*cmd[:-6], "--ood-set", f"svhn=svhn:{tmp_path / 'missing.mat'}"]
    done = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "error: SVHN not found at" in done.stderr, done.stderr
    assert "data/raw/svhn/test_32x32.mat" in done.stderr
