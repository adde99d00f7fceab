"""Files in and out: atomic writes, model files, JSON. Stages use these; engines never do."""

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import equinox as eqx
import numpy as np

from drlx.errors import InputError, InputNotFoundError, MissingArraysError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds,
    so a crash or an error never leaves a partial output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays as an uncompressed .npz (no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def read_arrays(path: str | Path, *names: str) -> dict[str, np.ndarray]:
    """Load named arrays from an .npz, refusing pickled objects; a missing file
    (InputNotFoundError), a missing array (MissingArraysError) or an unreadable file
    (InputError) is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: expected an .npz file here (run the stage before this)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise MissingArraysError(f"{path}: missing arrays {missing}; found {data.files}")
            return {n: data[n] for n in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated, not an .npz
        raise InputError(
            f"{path}: cannot be read as an .npz file ({type(err).__name__}: {err}); "
            "re-run the stage that writes it"
        ) from None


def save_model(path: str | Path, network: eqx.Module) -> None:
    """Serialise a network's arrays (Equinox leaf format: arrays only, no code)."""
    with atomic_path(path) as tmp:
        eqx.tree_serialise_leaves(tmp, network)


def load_model(path: str | Path, like: eqx.Module) -> eqx.Module:
    """Load arrays saved by `save_model` into a network of the same structure as `like`."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no model file here (run the train stage first)")
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as err:  # truncated file, other architecture, not a model file
        raise InputError(
            f"{path}: cannot be read as this spec's model ({type(err).__name__}: {err}); "
            "was it written by another spec, or truncated?"
        ) from None


def md5_file(path: str | Path) -> str:
    """MD5 of a file's bytes: DVC 3's `hash: md5` of a file (no newline conversion)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (identifies, e.g., the Inception weights of FID statistics)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
