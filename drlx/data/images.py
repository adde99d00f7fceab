"""Image datasets read from local files: scikit-learn's 8x8 digits, the CIFAR-10 binary
archive, folders of images (CelebA, LSUN exports) and .npz arrays.

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
    files = sorted(
        (f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
        key=lambda f: f.relative_to(path).as_posix(),
    )
    if not files:
        raise DatasetNotFoundError(f"no images in {path}: {hint}")
    images = np.empty((len(files), size, size, 3), np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                images[i] = _square_resized(image, size)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{file}: cannot read this image ({err})") from None
    return images


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
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no .npz file here; put it there or set data.path")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: an .npy file, expected an .npz archive (np.savez)")
        with archive:
            if key not in archive.files:
                raise DatasetError(f"{path}: no array {key!r}; found {archive.files} (data.key)")
            array = archive[key]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: cannot read {key!r} as an .npz array ({err})") from None
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
    second half of the test set; float32 in [-1, 1]."""
    train, _ = load_cifar10_binary(path, "train")
    test, _ = load_cifar10_binary(path, "test")
    half = len(test) // 2
    return {
        "train": to_model_space(train),
        "heldout": to_model_space(test[:half]),
        "heldout_b": to_model_space(test[half : 2 * half]),
    }
