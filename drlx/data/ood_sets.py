"""External out-of-distribution image sets for the paper-scale OOD stage (stages/ood.py
`--ood-set`): SVHN's test_32x32.mat, the CIFAR-100 binary archive and folders of images (CelebA).

Each loader returns float32 images (N, H, W, C) in model space ([-1, 1], x / 127.5 - 1, as
drlx.data.images.to_model_space), the first `num` of the file's order (all with num=None).
Nothing is downloaded and nothing is unpickled (the .mat file is read by scipy.io.loadmat, a
MATLAB v5 parser). A missing file raises DatasetNotFoundError naming where to put it; a
malformed one DatasetError naming the file and what was expected.
"""

import tarfile
import zlib
from pathlib import Path

import numpy as np

from drlx.data.images import (
    DatasetError,
    DatasetNotFoundError,
    load_image_folder,
    to_model_space,
)

SVHN_HINT = (
    "put test_32x32.mat (SVHN, format 2: cropped digits, from the official site) at "
    "data/raw/svhn/test_32x32.mat"
)
CIFAR100_HINT = (
    "put cifar-100-binary.tar.gz (the official *binary* version) at "
    "data/raw/cifar100/cifar-100-binary.tar.gz, or its extracted folder cifar-100-binary/ "
    "(with test.bin)"
)
CELEBA_HINT = "put the images (.jpg/.png/.webp, any depth; CelebA: the aligned JPEGs) under"
CIFAR100_RECORD = 2 + 3 * 32 * 32  # coarse label byte, fine label byte, R, G, B planes of 32x32
CIFAR100_MEMBERS = {"train": "cifar-100-binary/train.bin", "test": "cifar-100-binary/test.bin"}
KINDS = ("svhn", "cifar100", "image_folder")
_MAT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OSError, EOFError, zlib.error)


def _check_num(num: int | None) -> None:
    if num is not None and num < 1:
        raise ValueError(f"num must be positive or None, got {num}")


def load_svhn_mat(path: str | Path, num: int | None = None) -> np.ndarray:
    """SVHN's cropped digits from a MATLAB v5 .mat file (test_32x32.mat): `X` uint8
    (32, 32, 3, N), `y` (N, 1) labels 1..10 (10 is the digit 0; only checked, not returned).

    Returns:
        images (min(N, num), 32, 32, 3) float32 in [-1, 1].
    """
    from scipy.io import loadmat  # slow import: only when used
    from scipy.io.matlab import MatReadError

    _check_num(num)
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"SVHN not found at {path}: {SVHN_HINT}")
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DatasetError(f"{path}: {err}; expected the official MATLAB v5 file") from None
    except (MatReadError, *_MAT_ERRORS) as err:  # scipy, on a truncated file: IndexError
        raise DatasetError(
            f"{path}: not a readable MATLAB .mat file ({err}); {SVHN_HINT}"
        ) from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DatasetError(f"{path}: no variable(s) {missing} in the .mat file: not SVHN?")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] == 0:
        raise DatasetError(
            f"{path}: X is {x.dtype} of shape {x.shape}, expected uint8 (32, 32, 3, N) with "
            "N > 0 (height, width, RGB, image; the official file has N = 26032)"
        )
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise DatasetError(f"{path}: y has shape {y.shape}, expected ({n}, 1) for {n} images")
    if not np.issubdtype(y.dtype, np.number) or y.min() < 1 or y.max() > 10:
        raise DatasetError(f"{path}: labels y outside 1..10: not SVHN?")
    keep = n if num is None else min(num, n)
    return to_model_space(np.ascontiguousarray(x[..., :keep].transpose(3, 0, 1, 2)))


def _cifar100_table(data: bytes | None, size: int, where: str, keep: int) -> np.ndarray:
    if size == 0 or size % CIFAR100_RECORD:
        raise DatasetError(
            f"{where} is {size} bytes, expected a positive multiple of {CIFAR100_RECORD} "
            f"(2 label bytes + 3072 pixel bytes per record; {10_000 * CIFAR100_RECORD} bytes "
            "for the official test.bin): truncated or not CIFAR-100?"
        )
    return np.frombuffer(data, np.uint8).reshape(-1, CIFAR100_RECORD)[:keep]


def load_cifar100_binary(path: str | Path, split: str = "test", num: int | None = None):
    """One split of the official CIFAR-100 binary version: the .tar.gz (read straight from the
    archive; absolute or '..' member names are refused) or its extracted folder (holding
    test.bin, or cifar-100-binary/test.bin). Each record: the coarse label byte (0..19), the
    fine label byte (0..99), then the R, G and B planes of a 32x32 image, each row-major.

    Returns:
        images (min(N, num), 32, 32, 3) float32 in [-1, 1].
    """
    if split not in CIFAR100_MEMBERS:
        raise ValueError(f"CIFAR-100 split must be one of {list(CIFAR100_MEMBERS)}, got {split!r}")
    _check_num(num)
    path = Path(path)
    member_name = CIFAR100_MEMBERS[split]
    if path.is_dir():
        file = next(
            (f for f in (path / Path(member_name).name, path / member_name) if f.is_file()), None
        )
        if file is None:
            raise DatasetNotFoundError(f"no {Path(member_name).name} under {path}: {CIFAR100_HINT}")
        size = file.stat().st_size
        keep = size // CIFAR100_RECORD if num is None else num
        with open(file, "rb") as f:
            data = f.read(keep * CIFAR100_RECORD)
        table = _cifar100_table(data, size, str(file), keep)
    elif path.is_file():
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = {m.name: m for m in tar.getmembers()}
                for m in members.values():  # the standard library's extraction rules
                    try:
                        tarfile.data_filter(m, "/nonexistent")
                    except tarfile.FilterError as err:
                        raise DatasetError(
                            f"{path}: refusing an archive with an unsafe member ({err})"
                        ) from None
                member = members.get(member_name)
                if member is None or not member.isfile():
                    raise DatasetError(
                        f"{path}: no regular file {member_name} in the archive; is this the "
                        f"binary version of CIFAR-100? {CIFAR100_HINT}"
                    )
                keep = member.size // CIFAR100_RECORD if num is None else num
                if member.size and member.size % CIFAR100_RECORD == 0:
                    data = tar.extractfile(member).read(keep * CIFAR100_RECORD)
                else:
                    data = None  # refused below from its size alone
                table = _cifar100_table(data, member.size, f"{path}: member {member_name}", keep)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DatasetError(f"{path}: not a readable .tar.gz ({err}); {CIFAR100_HINT}") from None
    else:
        raise DatasetNotFoundError(f"CIFAR-100 not found at {path}: {CIFAR100_HINT}")
    if len(table) == 0:  # only a truncated read can get here (the size was checked)
        raise DatasetError(f"{path}: no complete CIFAR-100 record could be read")
    if table[:, 0].max() > 19 or table[:, 1].max() > 99:
        raise DatasetError(f"{path}: labels above 19 (coarse) or 99 (fine): not CIFAR-100?")
    images = table[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return to_model_space(np.ascontiguousarray(images))


def load_ood_image_folder(path: str | Path, size: int = 32, num: int | None = None) -> np.ndarray:
    """Images of a folder as `drlx.data.images.load_image_folder` reads them (recursively, in
    sorted path order, centre-cropped to a square, resized to size x size, RGB), the first
    `num` of them (every image is read: CelebA's 202,599 take minutes, once per stage run).

    Returns:
        images (min(N, num), size, size, 3) float32 in [-1, 1].
    """
    _check_num(num)
    try:
        images = load_image_folder(path, size)
    except DatasetNotFoundError:
        raise DatasetNotFoundError(f"no images at {path}: {CELEBA_HINT} {path}") from None
    return to_model_space(images[:num])


def load_ood_set(kind: str, path: str | Path, num: int | None = None, size: int = 32):
    """An external OOD set by kind: "svhn" (`load_svhn_mat`), "cifar100" (`load_cifar100_binary`,
    test split) or "image_folder" (`load_ood_image_folder`, resized to `size`)."""
    if kind == "svhn":
        return load_svhn_mat(path, num)
    if kind == "cifar100":
        return load_cifar100_binary(path, "test", num)
    if kind == "image_folder":
        return load_ood_image_folder(path, size, num)
    raise ValueError(f"unknown OOD set kind {kind!r}: expected one of {list(KINDS)}")


def parse_ood_set(text: str) -> tuple[str, str, str]:
    """`NAME=KIND:PATH` (the stage's --ood-set) -> (name, kind, path)."""
    name, eq, rest = text.partition("=")
    kind, colon, path = rest.partition(":")
    if not (eq and colon and name.strip() and path.strip()) or kind not in KINDS:
        raise ValueError(
            f"--ood-set {text!r}: expected NAME=KIND:PATH with KIND one of {list(KINDS)}, "
            "e.g. svhn=svhn:data/raw/svhn/test_32x32.mat"
        )
    return name.strip(), kind, path.strip()
