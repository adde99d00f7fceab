"""Image datasets from synthetic files in the real formats, the held-out splits, the data specs,
and the pipeline's horizontal flips."""

import numpy as np
import pydantic
import pytest
from helpers import BATCHES, cifar_records, imagenet32_rows, write_imagenet32, write_tar
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
    source = build_data(data_spec.Cifar10Data(kind="cifar10", path=str(path)))
    arrays = source.splits(0)
    assert {k: v.shape for k, v in arrays.items()} == {
        "train": (100, 32, 32, 3),
        "heldout": (10, 32, 32, 3),
        "heldout_b": (10, 32, 32, 3),
        "train_labels": (100,),
        "heldout_labels": (10,),
        "heldout_b_labels": (10,),
    }
    test, test_labels = truth[BATCHES[5]]
    np.testing.assert_array_equal(arrays["heldout_b"], test[10:] / np.float32(127.5) - 1)
    images_only = [arrays[k] for k in ("train", "heldout", "heldout_b")]
    assert all(a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1 for a in images_only)
    # the labels: the data batches' in order, then each half of the test batch's
    train_labels = np.concatenate([truth[n][1] for n in BATCHES[:5]])
    np.testing.assert_array_equal(arrays["train_labels"], train_labels)
    np.testing.assert_array_equal(arrays["heldout_labels"], test_labels[:10])
    np.testing.assert_array_equal(arrays["heldout_b_labels"], test_labels[10:])
    assert all(arrays[f"{k}_labels"].dtype == np.int64 for k in ("train", "heldout", "heldout_b"))
    assert source.num_classes == 10


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


def _square(folder, name: str, value: int):
    """A 6x6 PNG (lossless) of one gray level, in folder (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(folder / name)


def test_image_folder_labelled_by_subfolder(tmp_path):
    # classes in sorted order: ant 0, cat 1, dog 2; a class's images at any depth
    _square(tmp_path / "dog", "b.png", 30)
    _square(tmp_path / "dog", "a.png", 31)
    _square(tmp_path / "ant", "x.png", 10)
    _square(tmp_path / "cat" / "deep" / "er", "z.png", 20)
    _square(tmp_path / "cat", "y.png", 21)
    (tmp_path / "notes.txt").write_text("ignored, as without labels")
    x, y = images.load_labelled_image_folder(tmp_path, 6, 3)
    assert x.shape == (5, 6, 6, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    # by class, then by path within the class
    np.testing.assert_array_equal(x[:, 0, 0, 0], [10, 20, 21, 31, 30])
    np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1, :1, :1], x.shape))
    np.testing.assert_array_equal(y, [0, 1, 1, 2, 2])
    # without num_classes: every image under the folder, in path order, as before
    plain = images.load_image_folder(tmp_path, 6)
    np.testing.assert_array_equal(plain[:, 0, 0, 0], [10, 20, 21, 31, 30])

    spec = data_spec.ImageFolderData(
        kind="image_folder", path=str(tmp_path), size=6, num_heldout=1, num_classes=3
    )
    source = build_data(spec)
    assert source.num_classes == 3
    arrays = source.splits(0)
    gray_to_class = {10: 0, 20: 1, 21: 1, 30: 2, 31: 2}
    for split in ("train", "heldout", "heldout_b"):
        levels = np.rint((arrays[split][:, 0, 0, 0] + 1) * 127.5).astype(int)
        want = [gray_to_class[int(v)] for v in levels]
        np.testing.assert_array_equal(arrays[f"{split}_labels"], want)
    assert len(arrays["train_labels"]) == 3
    unlabelled = build_data(spec.model_copy(update={"num_classes": None})).splits(0)
    assert set(unlabelled) == {"train", "heldout", "heldout_b"}


def test_labelled_image_folder_errors(tmp_path):
    _square(tmp_path / "a", "1.png", 0)
    _square(tmp_path / "b", "2.png", 0)
    with pytest.raises(images.DatasetError, match=rf"{tmp_path}: 2 subfolders \(a, b\), but "
                       r"data.num_classes is 3: .*its own subfolder"):  # fmt: skip
        images.load_labelled_image_folder(tmp_path, 6, 3)
    (tmp_path / "c").mkdir()
    with pytest.raises(images.DatasetError, match=rf"{tmp_path / 'c'}: no images for class 2"):
        images.load_labelled_image_folder(tmp_path, 6, 3)
    _square(tmp_path, "stray.png", 0)
    with pytest.raises(images.DatasetError, match=r"images directly in the folder \(stray.png\)"):
        images.load_labelled_image_folder(tmp_path, 6, 3)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        images.load_labelled_image_folder(tmp_path / "absent", 6, 3)


def _labelled_npz(path, n: int = 12, **extra):
    """An .npz of n images whose pixels all equal 10 x their label (label i % 3)."""
    labels = np.arange(n) % 3
    x = np.broadcast_to((10 * labels)[:, None, None, None], (n, 2, 2, 3)).astype(np.uint8)
    np.savez(path, images=x, **({"labels": labels} | extra))
    return x, labels


def test_npz_labels(tmp_path):
    x, labels = _labelled_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(images.load_npz_labels(tmp_path / "d.npz", 12, 3), labels)
    raw = {"kind": "npz", "path": str(tmp_path / "d.npz"), "shape": [2, 2, 3], "num_heldout": 2}
    spec = data_spec.NpzData(**raw, num_classes=3)
    arrays = build_data(spec).splits(0)
    for split in ("train", "heldout", "heldout_b"):
        levels = np.rint((arrays[split][:, 0, 0, 0] + 1) * 127.5).astype(int)
        np.testing.assert_array_equal(arrays[f"{split}_labels"], levels // 10)
        assert arrays[f"{split}_labels"].dtype == np.int64
    assert [len(arrays[f"{s}_labels"]) for s in ("train", "heldout", "heldout_b")] == [8, 2, 2]
    assert set(build_data(data_spec.NpzData(**raw)).splits(0)) == {"train", "heldout", "heldout_b"}

    cases = {
        "short.npz": ({"labels": labels[:-1]}, r"labels of shape \(11,\), expected \(12,\)"),
        "wide.npz": ({"labels": labels[:, None]}, r"labels of shape \(12, 1\), expected \(12,\)"),
        "float.npz": ({"labels": labels * 1.0}, "labels of dtype float64, expected integers"),
        "bool.npz": ({"labels": labels > 0}, "labels of dtype bool, expected integers"),
        "big.npz": ({"labels": labels + 1}, r"in \[1, 3\], expected 0 .. 2 \(data.num_classes is"),
        "neg.npz": ({"labels": labels - 1}, r"labels in \[-1, 1\], expected 0 .. 2"),
        "obj.npz": ({"labels": np.array([{"a": 1}] * 12, dtype=object)}, "cannot read 'labels'"),
    }  # fmt: skip
    for name, (extra, message) in cases.items():
        np.savez(tmp_path / name, images=x, **extra)
        with pytest.raises(images.DatasetError, match=rf"{tmp_path / name}.*{message}"):
            build_data(data_spec.NpzData(**(raw | {"path": str(tmp_path / name)}), num_classes=3))\
                .splits(0)  # fmt: skip
    np.savez(tmp_path / "none.npz", images=x)
    with pytest.raises(images.DatasetError, match=r"none.npz: no array 'labels'; found \['images'\]"
                       r" \(data.num_classes is set"):  # fmt: skip
        images.load_npz_labels(tmp_path / "none.npz", 12, 3)


def test_imagenet32_reads_exact_pixels_channel_order_and_labels(tmp_path):
    truth = write_imagenet32(tmp_path)
    x, y = images.load_imagenet32(tmp_path, "train")
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    train = [f"train_data_batch_{i}.npz" for i in range(1, 11)]
    np.testing.assert_array_equal(x, np.concatenate([truth[n][0] for n in train]))
    np.testing.assert_array_equal(y, np.concatenate([truth[n][1] for n in train]))
    # the R plane first, then G, then B, each row-major; labels 1-based in the file
    np.testing.assert_array_equal(x[:, 0, 0], np.tile([10, 20, 30], (30, 1)))
    assert (x[:, 0, 1, 0] == 200).all()
    assert y[0] == 0 and y.min() >= 0 and y.max() <= 999
    first = np.load(tmp_path / "train_data_batch_1.npz")
    np.testing.assert_array_equal(x[0, :, :, 1].ravel(), first["data"][0, 1024:2048])  # G
    assert first["labels"][0] == 1

    arrays = images.imagenet32_splits(tmp_path)
    val_x, val_y = truth["val_data.npz"]
    expected = {
        "train": (x, y),
        "heldout": (val_x[:3], val_y[:3]),
        "heldout_b": (val_x[3:], val_y[3:]),
    }
    for split, (want_x, want_y) in expected.items():
        assert arrays[split].dtype == np.float32
        np.testing.assert_array_equal(arrays[split], images.to_model_space(want_x))
        np.testing.assert_array_equal(arrays[f"{split}_labels"], want_y)
    # the same through a spec, with the files in the official zip files' folders
    write_imagenet32(tmp_path / "zipped", subfolders=True)
    source = build_data(data_spec.ImageNet32Data(kind="imagenet32", path=str(tmp_path / "zipped")))
    assert source.num_classes == 1000 and source.shape == (32, 32, 3) and source.flip is True
    assert source.spread == 0
    from_folders = source.splits(0)
    assert all(np.array_equal(from_folders[k], arrays[k]) for k in arrays)


def test_imagenet32_errors(tmp_path):
    every = r"no train_data_batch_1.npz, .*, train_data_batch_10.npz, val_data.npz in "
    with pytest.raises(FileNotFoundError, match=rf"{every}{tmp_path}: .*data/raw/imagenet32"):
        images.imagenet32_splits(tmp_path)
    write_imagenet32(tmp_path)
    (tmp_path / "train_data_batch_7.npz").unlink()
    with pytest.raises(
        images.DatasetNotFoundError, match=rf"no train_data_batch_7.npz in {tmp_path}:"
    ):
        images.imagenet32_splits(tmp_path)
    data, labels, _ = imagenet32_rows(4, 0)
    cases = {
        "0-based": ({"data": data, "labels": labels - 1},
                    r"'labels'\]: labels in \[0, \d+\], expected 1 .. 1000 \(the official files"),
        "too big": ({"data": data, "labels": labels + 1000}, r"expected 1 .. 1000"),
        "float labels": ({"data": data, "labels": labels * 1.0}, "labels of dtype float64"),
        "no labels": ({"data": data}, r"no array 'labels'; found \['data'\]"),
        "no data": ({"labels": labels}, r"no array 'data'; found \['labels'\]"),
        "HWC rows": ({"data": data.reshape(4, 32, 32, 3), "labels": labels},
                     r"'data'\]: uint8 of shape \(4, 32, 32, 3\), expected uint8 \(4, 3072\)"),
        "row count": ({"data": data[:3], "labels": labels},
                      r"shape \(3, 3072\), expected uint8 \(4, 3072\)"),
        "dtype": ({"data": data.astype(np.int16), "labels": labels}, "int16 of shape"),
        "pickled": ({"data": np.array([{}] * 4, dtype=object), "labels": labels},
                    "cannot read 'data'"),
    }  # fmt: skip
    for arrays, message in cases.values():
        np.savez(tmp_path / "train_data_batch_7.npz", **arrays)
        with pytest.raises(images.DatasetError, match=rf"train_data_batch_7.npz.*{message}"):
            images.imagenet32_splits(tmp_path)
        with pytest.raises(images.DatasetError, match=message):
            images.load_imagenet32(tmp_path, "train")


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
        "imagenet32": ({"kind": "imagenet32"}, (32, 32, 3), True),
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
        {"kind": "imagenet32", "num_classes": 1000},  # fixed by the dataset
        {"kind": "npz", "path": "x.npz", "shape": [2, 2, 3], "num_classes": 1},
        {"kind": "image_folder", "path": "x", "size": 8, "num_classes": True},
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
