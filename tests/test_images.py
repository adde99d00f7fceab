"""Image datasets from synthetic files in the real formats, the held-out splits, the data specs,
and the pipeline's horizontal flips."""

import numpy as np
import pydantic
import pytest
from helpers import BATCHES, cifar_records, write_tar
from PIL import Image

from drlx.builder import build_data
from drlx.data import images
from drlx.data.pipeline import batch_iterator
from drlx.spec import data as data_spec

RECORD = 3073


@pytest.fixture
def cifar(tmp_path):
    """A synthetic cifar-10-binary.tar.gz of 20 records per batch file, and what it holds."""
    members, truth = {}, {}
    for i, name in enumerate(BATCHES):
        members[name], *truth[name] = cifar_records(20, i)
    return write_tar(tmp_path / "cifar-10-binary.tar.gz", members), truth


def test_cifar10_reads_exact_pixels_labels_and_channel_order(cifar):
    path, truth = cifar
    x, y = images.load_cifar10_binary(path, "train")
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (100,)
    np.testing.assert_array_equal(x, np.concatenate([truth[n][0] for n in BATCHES[:5]]))
    np.testing.assert_array_equal(y, np.concatenate([truth[n][1] for n in BATCHES[:5]]))
    np.testing.assert_array_equal(x[:, 0, 0], np.tile([10, 20, 30], (100, 1)))  # R, G, B
    x_test, y_test = images.load_cifar10_binary(path, "test")
    np.testing.assert_array_equal(x_test, truth[BATCHES[5]][0])
    np.testing.assert_array_equal(y_test, truth[BATCHES[5]][1])


def test_cifar10_prepare_splits_train_and_test_halves(cifar):
    path, truth = cifar
    arrays = build_data(data_spec.Cifar10Data(kind="cifar10", path=str(path))).splits(0)
    assert {k: v.shape for k, v in arrays.items()} == {
        "train": (100, 32, 32, 3),
        "heldout": (10, 32, 32, 3),
        "heldout_b": (10, 32, 32, 3),
    }
    test = truth[BATCHES[5]][0]
    np.testing.assert_array_equal(arrays["heldout_b"], test[10:] / np.float32(127.5) - 1)
    assert all(a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1 for a in arrays.values())


def test_cifar10_truncated_member_is_named(tmp_path):
    members = {name: cifar_records(3, 0)[0] for name in BATCHES}
    members[BATCHES[2]] = members[BATCHES[2]][:-5]
    path = write_tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(images.DatasetError, match=rf"{BATCHES[2]} is {3 * RECORD - 5} bytes.*3073"):
        images.load_cifar10_binary(path, "train")


def test_cifar10_missing_member_and_missing_archive(tmp_path):
    path = write_tar(tmp_path / "c.tar.gz", {BATCHES[0]: cifar_records(2, 0)[0]})
    with pytest.raises(images.DatasetError, match="data_batch_2.bin"):
        images.load_cifar10_binary(path, "train")
    missing = tmp_path / "nowhere.tar.gz"
    with pytest.raises(FileNotFoundError, match="data/raw/cifar10/cifar-10-binary.tar.gz") as err:
        images.load_cifar10_binary(missing, "train")
    assert isinstance(err.value, images.DatasetError) and str(missing) in str(err.value)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(images.DatasetError, match="junk.tar.gz"):
        images.load_cifar10_binary(tmp_path / "junk.tar.gz", "test")


@pytest.mark.parametrize("evil", ["../evil", "/etc/evil", "cifar-10-batches-bin/../../evil"])
def test_cifar10_refuses_path_traversal(tmp_path, evil):
    members = {name: cifar_records(2, 0)[0] for name in BATCHES} | {evil: b"x"}
    path = write_tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(images.DatasetError, match="unsafe"):
        images.load_cifar10_binary(path, "train")


def test_image_folder_crops_centre_and_resizes(tmp_path):
    # 12 x 8 (wide): columns 0-1 and 10-11 are red borders, to be cropped off symmetrically.
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, :2] = wide[:, 10:] = (255, 0, 0)
    wide[:, 2:6], wide[:, 6:10] = (0, 255, 0), (0, 0, 255)  # left half green, right half blue
    # 6 x 10 (tall): rows 0-1 and 8-9 are borders; a gray square between them.
    tall = np.zeros((10, 6, 3), np.uint8)
    tall[:2] = tall[8:] = 255
    tall[2:8] = 100
    (tmp_path / "sub").mkdir()
    Image.fromarray(wide).save(tmp_path / "b.png")
    Image.fromarray(tall[..., 0], mode="L").save(tmp_path / "sub" / "a.PNG")
    Image.fromarray(tall).save(tmp_path / "c.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("ignored")

    x = images.load_image_folder(tmp_path, 8)  # order: b.png, c.webp, sub/a.PNG
    assert x.shape == (3, 8, 8, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], wide[:, 2:10])  # no resize needed: exact crop
    np.testing.assert_array_equal(x[2], np.full((8, 8, 3), 100))  # gray (L) -> RGB
    np.testing.assert_array_equal(x[1], np.full((8, 8, 3), 100))

    small = images.load_image_folder(tmp_path, 4)  # 8 -> 4 and 6 -> 4: resized
    assert small.shape == (3, 4, 4, 3)
    left, right = small[0, :, :2].astype(int), small[0, :, 2:].astype(int)
    assert (left[..., 1] > 200).all() and (left[..., 0] < 30).all()  # green, no red border
    assert (right[..., 2] > 200).all() and (right[..., 0] < 30).all()  # blue, no red border
    assert np.abs(small[1:].astype(int) - 100).max() <= 2


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        images.load_image_folder(tmp_path / "absent", 8)
    with pytest.raises(images.DatasetError, match="no images in"):
        images.load_image_folder(tmp_path, 8)
    Image.new("RGB", (5, 5)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(images.DatasetError, match="bad.jpg"):
        images.load_image_folder(tmp_path, 4)


def test_npz_round_trip_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=x, other=x[..., 0], ints=x.astype(np.int32))
    np.testing.assert_array_equal(images.load_npz(tmp_path / "d.npz", "images", (4, 5, 3)), x)
    z = (x / 127.5 - 1).astype(np.float64)
    np.savez(tmp_path / "f.npz", images=z, big=z * 2)
    loaded = images.load_npz(tmp_path / "f.npz", "images")
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, images.to_model_space(x), atol=1e-6)

    cases = {
        ("d.npz", "other"): r"shape \(7, 4, 5\), expected \(N, H, W, C\)",
        ("d.npz", "ints"): "dtype int32, expected uint8",
        ("d.npz", "nope"): r"no array 'nope'; found \['images', 'other', 'ints'\]",
        ("f.npz", "big"): r"expected within \[-1, 1\]",
    }
    for (name, key), message in cases.items():
        with pytest.raises(images.DatasetError, match=message):
            images.load_npz(tmp_path / name, key)
    with pytest.raises(images.DatasetError, match=r"the spec says \(5, 4, 3\)"):
        images.load_npz(tmp_path / "d.npz", "images", (5, 4, 3))
    np.save(tmp_path / "plain.npy", x)
    with pytest.raises(images.DatasetError, match="an .npy file"):
        images.load_npz(tmp_path / "plain.npy", "images")
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(images.DatasetError, match="obj.npz"):  # never unpickled
        images.load_npz(tmp_path / "obj.npz", "images")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        images.load_npz(tmp_path / "missing.npz", "images")


def test_digits_shape_range_labels_and_split():
    x, y = images.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.uint8
    assert x.min() == 0 and x.max() == 255 and set(np.unique(y)) == set(range(10))
    spec = data_spec.DigitsData(kind="digits")
    a, b = build_data(spec).splits(1), build_data(spec).splits(1)
    assert {k: v.shape[0] for k, v in a.items()} == {
        "train": 1203,
        "heldout": 297,
        "heldout_b": 297,
        "train_labels": 1203,
        "heldout_labels": 297,
        "heldout_b_labels": 297,
    }
    assert all(np.array_equal(a[k], b[k]) for k in a)  # fixed by the seed
    assert not np.array_equal(build_data(spec).splits(2)["heldout"], a["heldout"])
    # A partition: the splits together hold every image exactly once (as a multiset of rows).
    union = np.concatenate([a[k] for k in ("train", "heldout", "heldout_b")]).reshape(1797, -1)
    full = images.to_model_space(x).reshape(1797, -1)
    assert sorted(r.tobytes() for r in union) == sorted(r.tobytes() for r in full)
    assert a["train"].dtype == np.float32 and a["train"].min() == -1 and a["train"].max() == 1


def test_split_by_seed_is_a_partition():
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    parts = images.split_by_seed(x, 8, seed=0)
    ids = {k: np.rint((v.ravel() + 1) * 127.5).astype(int) for k, v in parts.items()}
    assert [len(ids[k]) for k in ("train", "heldout", "heldout_b")] == [34, 8, 8]
    assert sorted(np.concatenate(list(ids.values()))) == list(range(50))
    with pytest.raises(images.DatasetError, match="lower data.num_heldout"):
        images.split_by_seed(x, 25, seed=0)


def test_image_specs_parse_and_shapes(tmp_path):
    adapter = pydantic.TypeAdapter(data_spec.DataSpec)
    specs = {
        "digits": ({"kind": "digits"}, (8, 8, 1), False),
        "cifar10": ({"kind": "cifar10"}, (32, 32, 3), True),
        "folder": ({"kind": "image_folder", "path": "x", "size": 64}, (64, 64, 3), True),
        "npz": ({"kind": "npz", "path": "x.npz", "shape": [28, 28, 1]}, (28, 28, 1), False),
    }
    for raw, shape, flip in specs.values():
        spec = adapter.validate_python(raw)
        source = build_data(spec)
        assert source.shape == shape and source.flip is flip
    bad = [
        {"kind": "digits", "path": "x"},  # extra key
        {"kind": "image_folder", "path": "x", "size": 0},
        {"kind": "image_folder", "path": "x"},
        {"kind": "npz", "path": "x.npz"},
        {"kind": "digits", "num_heldout": 899},
    ]
    for raw in bad:
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_python(raw)

    x = np.zeros((30, 6, 6, 3), np.uint8)
    np.savez(tmp_path / "d.npz", images=x)
    spec = adapter.validate_python(
        {"kind": "npz", "path": str(tmp_path / "d.npz"), "shape": [6, 6, 3], "num_heldout": 5}
    )
    arrays = build_data(spec).splits(0)
    assert arrays["train"].shape == (20, 6, 6, 3) and np.all(arrays["train"] == -1)


def flip_data(n: int = 64) -> np.ndarray:
    """Images whose row 0 encodes the example index at column 0 and its negative at column 2."""
    x = np.zeros((n, 2, 3, 1), np.float32)
    x[:, 0, 0, 0], x[:, 0, 2, 0] = np.arange(n), -np.arange(n) - 1
    return x


def take(iterator, count: int) -> list[np.ndarray]:
    return [next(iterator) for _ in range(count)]


def test_flip_off_leaves_batches_unchanged_and_on_mirrors_some():
    x = flip_data()
    plain = take(batch_iterator(x, 16, seed=3), 40)
    flipped = take(batch_iterator(x, 16, seed=3, flip=True), 40)
    for p, f in zip(plain, flipped, strict=True):
        np.testing.assert_array_equal(np.sort(p[:, 0, 0, 0]), p[:, 0, 0, 0])  # original rows
        mirrored = f[:, 0, 0, 0] < 0
        same = np.where(mirrored[:, None, None, None], f[:, :, ::-1], f)
        np.testing.assert_array_equal(same, p)  # same examples, some mirrored exactly
        np.testing.assert_array_equal(p, x[p[:, 0, 0, 0].astype(int)])  # flip=False: untouched
    fraction = np.mean([f[:, 0, 0, 0] < 0 for f in flipped])
    assert 0.44 < fraction < 0.56  # 640 fair coins: sd 0.02


def test_flip_is_deterministic_and_resumable():
    x = flip_data()
    first = take(batch_iterator(x, 16, seed=5, flip=True), 12)
    np.testing.assert_array_equal(first, take(batch_iterator(x, 16, seed=5, flip=True), 12))
    other = take(batch_iterator(x, 16, seed=6, flip=True), 12)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))

    it = batch_iterator(x, 16, seed=5, flip=True)
    take(it, 7)
    state = it.get_state()
    resumed = batch_iterator(x, 16, seed=5, flip=True)
    resumed.set_state(state)
    np.testing.assert_array_equal(take(resumed, 5), first[7:])
    with pytest.raises(ValueError, match="flip needs images"):
        batch_iterator(np.zeros((20, 2), np.float32), 4, seed=0, flip=True)
