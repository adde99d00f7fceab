"""Turn a data spec into arrays: train, held-out, and a second held-out draw (the floor)."""

import zlib

import numpy as np

from drlx.data import images
from drlx.data.toy2d import sample_toy
from drlx.spec import data as data_spec

SPLITS = ("train", "heldout", "heldout_b")


def split_seed(seed: int, split: str) -> int:
    """An independent integer seed for each split, derived from the experiment seed."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode())]).generate_state(1)[0])


def prepare_arrays(spec: data_spec.DataSpec, seed: int) -> dict[str, np.ndarray]:
    """Generate or read the dataset of a spec, split into SPLITS.

    Arguments:
        spec: the data block.
        seed: the experiment seed.

    Returns:
        {"train", "heldout", "heldout_b"} arrays in the model's data space ([-1, 1] scale); for
        digits also their class labels, "train_labels", "heldout_labels", "heldout_b_labels".
    """
    match spec:
        case data_spec.Toy2DData():
            sizes = {
                "train": spec.num_train,
                "heldout": spec.num_heldout,
                "heldout_b": spec.num_heldout,
            }
            return {s: sample_toy(spec.name, n, split_seed(seed, s)) for s, n in sizes.items()}
        case data_spec.DigitsData():
            pixels, labels = images.load_digits()  # labels for the digits feature extractor
            return images.split_by_seed(pixels, spec.num_heldout, seed, labels=labels)
        case data_spec.Cifar10Data():
            return images.cifar10_splits(spec.path)
        case data_spec.ImageFolderData():
            array = images.load_image_folder(spec.path, spec.size)
            return images.split_by_seed(array, spec.num_heldout, seed)
        case data_spec.NpzData():
            array = images.load_npz(spec.path, spec.key, spec.shape)
            return images.split_by_seed(array, spec.num_heldout, seed)
    raise TypeError(f"no data preparation for {spec!r}")
