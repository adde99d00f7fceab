"""Image datasets read from local files: scikit-learn's 8x8 digits, the CIFAR-10 binary
archive, the downsampled ImageNet 32x32 .npz batches, folders of images (CelebA, LSUN exports;
optionally one subfolder per class) and .npz arrays (optionally with labels).

Loaders return uint8 arrays (N, H, W, C), plus labels where the dataset has them; nothing is
ever downloaded and nothing is unpickled. `to_model_space` maps them to float32 in [-1, 1].
A missing or malformed file raises `DatasetError`, naming the file and where it belongs.
"""

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from drlx.errors import InputError, InputNotFoundError

CIFAR10_HINT = (
    "put cifar-10-binary.tar.gz (from the official site, binary version) at "
    "data/raw/cifar10/cifar-10-binary.tar.gz, or set data.path in the spec"
)
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes of 32x32
CIFAR10_MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Downsampled ImageNet (Chrabaszcz et al. 2017), image-net.org's Imagenet32_train_npz and
# Imagenet32_val_npz: each file an .npz with `data` (N, 3072) uint8, the R, G and B planes of a
# 32x32 image, each row-major, and `labels` (N,) in 1..1000 (the train batches also hold `mean`).
IMAGENET32_FILES = {
    "train": [f"train_data_batch_{i}.npz" for i in range(1, 11)],
    "val": ["val_data.npz"],
}
# the folders the official zip files extract to, also searched under data.path
IMAGENET32_FOLDERS = {"train": "Imagenet32_train_npz", "val": "Imagenet32_val_npz"}
IMAGENET32_CLASSES = 1000
IMAGENET32_HINT = (
    "put train_data_batch_1.npz .. train_data_batch_10.npz and val_data.npz (the downsampled "
    "ImageNet 32x32 from image-net.org: Imagenet32_train_npz and Imagenet32_val_npz, "
    "extracted) in data/raw/imagenet32/ (directly or in their Imagenet32_train_npz/ and "
    "Imagenet32_val_npz/ folders), or set data.path"
)


class DatasetError(InputError):
    """A dataset file is malformed: the message names the file and what was expected."""


class DatasetNotFoundError(DatasetError, InputNotFoundError):
    """A dataset file is missing: the message names it and where to put it."""


def to_model_space(images: np.ndarray) -> np.ndarray:
    """Map uint8 pixels to float32 in [-1, 1] (x / 127.5 - 1); floating arrays, already in
    [-1, 1] (as `load_npz` checks), are only cast to float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if np.issubdtype(images.dtype, np.floating):
        return images.astype(np.float32)
    raise TypeError(f"expected uint8 or floating images, got {images.dtype}")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's embedded 8x8 handwritten digits (1797 images; levels 0..16 -> 0..255).

    Returns:
        images (1797, 8, 8, 1) uint8 and labels (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # slow import: only when used

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts


def load_cifar10_binary(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of the official CIFAR-10 binary archive, straight from the tar.

    Each record of a batch file is 1 label byte then 3072 pixel bytes: the R, G and B planes
    of a 32x32 image, each row-major. Archives with absolute or '..' member names are refused.

    Arguments:
        path: cifar-10-binary.tar.gz.
        split: "train" (data_batch_1..5) or "test" (test_batch).

    Returns:
        images (N, 32, 32, 3) uint8 and labels (N,) int64 in 0..9.
    """
    if split not in CIFAR10_MEMBERS:
        raise ValueError(f"CIFAR-10 split must be one of {list(CIFAR10_MEMBERS)}, got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR-10 not found at {path}: {CIFAR10_HINT}")
    records = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            bad = [name for name in members if _unsafe_member(name)]
            if bad:
                raise DatasetError(f"{path}: refusing an archive with unsafe member names {bad}")
            for name in CIFAR10_MEMBERS[split]:
                member = members.get(name)
                if member is None or not member.isfile():
                    raise DatasetError(
                        f"{path}: no regular file {name} in the archive; is this the binary "
                        f"version of CIFAR-10? {CIFAR10_HINT}"
                    )
                data = tar.extractfile(member).read()
                if len(data) == 0 or len(data) % CIFAR10_RECORD:
                    raise DatasetError(
                        f"{path}: member {name} is {len(data)} bytes, expected a positive "
                        f"multiple of {CIFAR10_RECORD} (1 label byte + 3072 pixel bytes per "
                        f"record; {10_000 * CIFAR10_RECORD} bytes in the official archive): "
                        "truncated or not CIFAR-10?"
                    )
                records.append(np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path}: not a readable .tar.gz ({err}); {CIFAR10_HINT}") from None
    table = np.concatenate(records)
    labels = table[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(f"{path}: labels above 9 in split {split!r}: not CIFAR-10?")
    images = table[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _square_resized(image: Image.Image, size: int) -> np.ndarray:
    """Crop the largest centred square and resize it to size x size (Lanczos, antialiased)."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _image_files(folder: Path, root: Path) -> list[Path]:
    """The image files under `folder` (recursively), sorted by their path relative to `root`."""
    return sorted(
        (f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
        key=lambda f: f.relative_to(root).as_posix(),
    )


def _read_images(files: list[Path], size: int) -> np.ndarray:
    """The files read as RGB, each centre-cropped and resized: (N, size, size, 3) uint8."""
    images = np.empty((len(files), size, size, 3), np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                images[i] = _square_resized(image, size)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{file}: cannot read this image ({err})") from None
    return images


def load_image_folder(path: str | Path, size: int) -> np.ndarray:
    """Every .jpg/.jpeg/.png/.webp under a folder (recursively, in sorted path order), each
    centre-cropped to a square and resized to (size, size), as RGB.

    Arguments:
        path: the folder.
        size: output height and width in pixels.

    Returns:
        images (N, size, size, 3) uint8.
    """
    path = Path(path)
    hint = f"put the images (.jpg/.png/.webp, any depth) under {path}, or set data.path"
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder not found at {path}: {hint}")
    files = _image_files(path, path)
    if not files:
        raise DatasetNotFoundError(f"no images in {path}: {hint}")
    return _read_images(files, size)


def load_labelled_image_folder(
    path: str | Path, size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A folder with one subfolder per class: the subfolders' names in sorted order are classes
    0, 1, ..., each holding its images at any depth; images read as `load_image_folder` reads
    them. Files other than images directly in the folder are ignored, images are an error.

    Arguments:
        path: the folder.
        size: output height and width in pixels.
        num_classes: the number of subfolders expected (data.num_classes).

    Returns:
        images (N, size, size, 3) uint8, ordered by class, then by path within the class, and
        labels (N,) int64 in 0..num_classes-1.
    """
    path = Path(path)
    hint = (
        f"with data.num_classes set, put each class's images (.jpg/.png/.webp, any depth) in "
        f"its own subfolder of {path} (subfolders in sorted order are classes 0, 1, ...), or set "
        "data.path"
    )
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder not found at {path}: {hint}")
    loose = sorted(
        f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )
    if loose:
        raise DatasetError(
            f"{path}: images directly in the folder ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}), outside any class subfolder: {hint}"
        )
    classes = sorted((d for d in path.iterdir() if d.is_dir()), key=lambda d: d.name)
    if len(classes) != num_classes:
        names = [d.name for d in classes]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DatasetError(
            f"{path}: {len(classes)} subfolders ({shown or 'none'}), but data.num_classes is "
            f"{num_classes}: {hint}"
        )
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = _image_files(folder, folder)
        if not found:
            raise DatasetError(f"{folder}: no images for class {label} ({folder.name}): {hint}")
        files += found
        labels += [label] * len(found)
    return _read_images(files, size), np.asarray(labels, np.int64)


def _read_npz(path: Path, key: str, what: str) -> np.ndarray:
    """One array of an .npz file (allow_pickle=False); `what` says in a missing array's message
    where its name comes from."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no .npz file here; put it there or set data.path")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: an .npy file, expected an .npz archive (np.savez)")
        with archive:
            if key not in archive.files:
                raise DatasetError(f"{path}: no array {key!r}; found {archive.files} ({what})")
            return archive[key]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: cannot read {key!r} as an .npz array ({err})") from None


def load_npz(path: str | Path, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One array of an .npz: uint8 images (N, H, W, C), or floating ones in [-1, 1].

    Arguments:
        path: the .npz file (read with allow_pickle=False).
        key: the array's name inside it.
        shape: the expected (H, W, C) of one image, or None to accept any.

    Returns:
        The array as stored if uint8, else as float32.
    """
    path = Path(path)
    array = _read_npz(path, key, "data.key")
    where = f"{path}[{key!r}]"
    if array.ndim != 4 or len(array) == 0:
        raise DatasetError(
            f"{where}: shape {array.shape}, expected (N, H, W, C) with N > 0 (channels last)"
        )
    if shape is not None and tuple(array.shape[1:]) != tuple(shape):
        raise DatasetError(f"{where}: images of shape {array.shape[1:]}, the spec says {shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(f"{where}: dtype {array.dtype}, expected uint8 or float in [-1, 1]")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DatasetError(f"{where}: non-finite values")
    low, high = float(array.min()), float(array.max())
    if low < -1.0 or high > 1.0:
        raise DatasetError(f"{where}: float values in [{low}, {high}], expected within [-1, 1]")
    return array


def _check_labels(
    labels: np.ndarray, where: str, num: int, low: int, high: int, why: str = ""
) -> np.ndarray:
    """Labels as int64 after checking that they are `num` integers in low..high (`why`: what
    sets that range, for the message)."""
    if labels.ndim != 1 or len(labels) != num:
        raise DatasetError(
            f"{where}: labels of shape {labels.shape}, expected ({num},): one per image"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: labels of dtype {labels.dtype}, expected integers")
    if num and (labels.min() < low or labels.max() > high):
        raise DatasetError(
            f"{where}: labels in [{labels.min()}, {labels.max()}], expected {low} .. {high}{why}"
        )
    return labels.astype(np.int64)


def load_npz_labels(path: str | Path, num_images: int, num_classes: int) -> np.ndarray:
    """The class labels of an .npz dataset: its integer array `labels` (N,), one per image, in
    0..num_classes-1.

    Arguments:
        path: the .npz file (read with allow_pickle=False).
        num_images: N, the number of images of the file's image array.
        num_classes: data.num_classes.

    Returns:
        labels (N,) int64.
    """
    path = Path(path)
    labels = _read_npz(path, "labels", "data.num_classes is set: the class of every image")
    why = f" (data.num_classes is {num_classes})"
    return _check_labels(labels, f"{path}['labels']", num_images, 0, num_classes - 1, why)


def split_by_seed(
    images: np.ndarray, num_heldout: int, seed: int, labels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """A random split, fixed by `seed`, into disjoint train / heldout / heldout_b sets.

    Arguments:
        images: uint8 or [-1, 1] images, examples along the first axis.
        num_heldout: examples in each of the two held-out sets.
        seed: the experiment seed.
        labels: optional labels of the images, split the same way (the images' split does not
            depend on them).

    Returns:
        {"train", "heldout", "heldout_b"} float32 in [-1, 1], each in the original order; with
        labels also {"train_labels", "heldout_labels", "heldout_b_labels"} int64.
    """
    n = len(images)
    if 2 * num_heldout >= n:
        raise DatasetError(
            f"2 x num_heldout = {2 * num_heldout} leaves no training examples out of {n}: "
            "lower data.num_heldout"
        )
    order = np.random.default_rng([seed, zlib.crc32(b"heldout_split")]).permutation(n)
    parts = {
        "heldout": order[:num_heldout],
        "heldout_b": order[num_heldout : 2 * num_heldout],
        "train": order[2 * num_heldout :],
    }
    out = {name: to_model_space(images[np.sort(rows)]) for name, rows in parts.items()}
    if labels is not None:
        if len(labels) != n:
            raise DatasetError(f"{len(labels)} labels for {n} images")
        labels = np.asarray(labels, np.int64)
        out |= {f"{name}_labels": labels[np.sort(rows)] for name, rows in parts.items()}
    return out


def cifar10_splits(path: str | Path) -> dict[str, np.ndarray]:
    """CIFAR-10's fixed split: train = the five data batches, heldout / heldout_b = the first /
    second half of the test set; float32 in [-1, 1], with their labels ("train_labels",
    "heldout_labels", "heldout_b_labels", int64 in 0..9)."""
    train, train_labels = load_cifar10_binary(path, "train")
    test, test_labels = load_cifar10_binary(path, "test")
    half = len(test) // 2
    return {
        "train": to_model_space(train),
        "heldout": to_model_space(test[:half]),
        "heldout_b": to_model_space(test[half : 2 * half]),
        "train_labels": train_labels,
        "heldout_labels": test_labels[:half],
        "heldout_b_labels": test_labels[half : 2 * half],
    }


def _imagenet32_paths(folder: Path, *splits: str) -> dict[str, list[Path]]:
    """The files of each split, each directly in `folder` or in its official subfolder; every
    missing file is named at once."""
    found, missing = {}, []
    for split in splits:
        if split not in IMAGENET32_FILES:
            raise ValueError(
                f"ImageNet32 split must be one of {list(IMAGENET32_FILES)}, got {split!r}"
            )
        found[split] = []
        for name in IMAGENET32_FILES[split]:
            candidates = [folder / name, folder / IMAGENET32_FOLDERS[split] / name]
            hit = next((c for c in candidates if c.is_file()), None)
            found[split].append(hit)
            if hit is None:
                missing.append(name)
    if missing:
        raise DatasetNotFoundError(
            f"ImageNet 32x32 not found: no {', '.join(missing)} in {folder}: {IMAGENET32_HINT}"
        )
    return found


def _imagenet32_labels(file: Path) -> np.ndarray:
    """A file's labels, checked to be 1..1000, as 0-based int64."""
    labels = _read_npz(file, "labels", "an official ImageNet32 file holds data and labels")
    where = f"{file}['labels']"
    if labels.ndim != 1 or len(labels) == 0:
        raise DatasetError(f"{where}: shape {labels.shape}, expected (N,) with N > 0")
    why = " (the official files number the classes from 1)"
    return _check_labels(labels, where, len(labels), 1, IMAGENET32_CLASSES, why) - 1


def _imagenet32_pixels(file: Path, num: int) -> np.ndarray:
    """A file's `data` rows as images (num, 32, 32, 3) uint8: a transposed view of the R, G
    and B planes."""
    data = _read_npz(file, "data", "an official ImageNet32 file holds data and labels")
    where = f"{file}['data']"
    if data.shape != (num, 3 * 32 * 32) or data.dtype != np.uint8:
        raise DatasetError(
            f"{where}: {data.dtype} of shape {data.shape}, expected uint8 ({num}, 3072): one row "
            "per label, the R, G and B planes of a 32x32 image"
        )
    return data.reshape(num, 3, 32, 32).transpose(0, 2, 3, 1)


def load_imagenet32(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), as image-net.org
    distributes it in .npz files (read with allow_pickle=False; `mean` is not read).

    Arguments:
        path: the folder holding the files (directly, or in the folders Imagenet32_train_npz/
            and Imagenet32_val_npz/ their zip files extract to).
        split: "train" (train_data_batch_1..10.npz, 1,281,167 images) or "val" (val_data.npz,
            50,000 images).

    Returns:
        images (N, 32, 32, 3) uint8 and labels (N,) int64 in 0..999 (the files' 1..1000 - 1),
        in the files' order.
    """
    pixels, labels = [], []
    for file in _imagenet32_paths(Path(path), split)[split]:
        labels.append(_imagenet32_labels(file))
        pixels.append(_imagenet32_pixels(file, len(labels[-1])))
    return np.concatenate(pixels), np.concatenate(labels)


def _imagenet32_model_space(files: list[Path], labels: list[np.ndarray]) -> np.ndarray:
    """The files' images in model space, converted a few thousand at a time into one float32
    array: no uint8 copy of the whole split, no float64 temporaries."""
    out = np.empty((sum(map(len, labels)), 32, 32, 3), np.float32)
    start, chunk = 0, 8192
    for file, file_labels in zip(files, labels, strict=True):
        pixels = _imagenet32_pixels(file, len(file_labels))
        for i in range(0, len(pixels), chunk):
            rows = pixels[i : i + chunk]
            out[start + i : start + i + len(rows)] = to_model_space(rows)
        start += len(pixels)
    return out


def imagenet32_splits(path: str | Path) -> dict[str, np.ndarray]:
    """ImageNet 32x32's fixed split: train = the ten training batches, heldout / heldout_b = the
    first / second half of the validation set (as CIFAR-10's test set); float32 in [-1, 1], with
    their labels (int64 in 0..999). Every file must be there, and every file's labels and the
    validation images are read and checked, before the training images' 15.7 GB of float32 are
    allocated; they are filled one file at a time."""
    path = Path(path)
    train_files = _imagenet32_paths(path, "train", "val")["train"]
    train_labels = [_imagenet32_labels(f) for f in train_files]
    val, val_labels = load_imagenet32(path, "val")
    half = len(val) // 2
    return {
        "train": _imagenet32_model_space(train_files, train_labels),
        "heldout": to_model_space(val[:half]),
        "heldout_b": to_model_space(val[half : 2 * half]),
        "train_labels": np.concatenate(train_labels),
        "heldout_labels": val_labels[:half],
        "heldout_b_labels": val_labels[half : 2 * half],
    }
