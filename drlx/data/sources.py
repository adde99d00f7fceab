"""Data sources: what a data block of a spec compiles to. Each knows the shape of one example,
whether training batches are flipped, how to produce its splits, and its `spread`: the std of
its thinnest local direction (toys: their noise; images: 0, they lie on a manifold), which
bounds how narrow a level's target can be (the step-size check, docs/method.md §4.1b).

Every source's `splits(seed)` returns {"train", "heldout", "heldout_b"} arrays in the model's
data space ([-1, 1] scale); "heldout_b" is a second held-out draw, the floor of every
sample-quality number. Labelled sources (`num_classes` not None) also return their class labels
("train_labels", ...).
"""

import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drlx.data import images
from drlx.data.toy2d import sample_toy, toy_log_density, toy_noise_std

SPLITS = ("train", "heldout", "heldout_b")


def split_seed(seed: int, split: str) -> int:
    """An independent integer seed for each split, derived from the experiment seed."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode())]).generate_state(1)[0])


@dataclass(frozen=True)
class Toy2D:
    """A 2D toy distribution, generated (drlx.data.toy2d); its true density is known."""

    kind: ClassVar[str] = "toy2d"

    name: str
    num_train: int
    num_heldout: int
    shape: tuple[int, ...] = (2,)
    flip: bool = False
    num_classes: ClassVar[int | None] = None  # no classes; attributes from the points

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        n = self.num_heldout
        sizes = {"train": self.num_train, "heldout": n, "heldout_b": n}
        return {s: sample_toy(self.name, n, split_seed(seed, s)) for s, n in sizes.items()}

    @property
    def spread(self) -> float:
        """The std of the Gaussian noise around every clean point."""
        return toy_noise_std(self.name)

    def log_density(self, x: np.ndarray, scale: float = 1.0, noise_std: float = 0.0) -> np.ndarray:
        """The true log-density of each point; with `scale` and `noise_std`, of the data diffused
        to scale * x + noise_std * eps (a level's marginal)."""
        return toy_log_density(self.name, x, scale, noise_std)


@dataclass(frozen=True)
class Digits:
    """scikit-learn's embedded 8x8 digits with their labels, split at random by the seed."""

    kind: ClassVar[str] = "digits"
    spread: ClassVar[float] = 0.0
    num_classes: ClassVar[int] = 10

    num_heldout: int
    flip: bool
    shape: tuple[int, ...] = (8, 8, 1)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        pixels, labels = images.load_digits()  # labels for the digits feature extractor
        return images.split_by_seed(pixels, self.num_heldout, seed, labels=labels)


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10's official binary archive with its labels: train = its 50k training images,
    held-out sets = the two halves of its test set (the seed is not used)."""

    kind: ClassVar[str] = "cifar10"
    spread: ClassVar[float] = 0.0
    num_classes: ClassVar[int] = 10

    path: str
    flip: bool
    shape: tuple[int, ...] = (32, 32, 3)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        return images.cifar10_splits(self.path)


@dataclass(frozen=True)
class ImageFolder:
    """Image files under a folder, centre-cropped and resized to size x size."""

    kind: ClassVar[str] = "image_folder"
    spread: ClassVar[float] = 0.0

    path: str
    size: int
    num_heldout: int
    flip: bool
    num_classes: int | None = None  # labelled by subfolder

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        if self.num_classes is None:
            array = images.load_image_folder(self.path, self.size)
            return images.split_by_seed(array, self.num_heldout, seed)
        array, labels = images.load_labelled_image_folder(self.path, self.size, self.num_classes)
        return images.split_by_seed(array, self.num_heldout, seed, labels=labels)


@dataclass(frozen=True)
class Npz:
    """Images in an .npz array; `shape` is stated, and checked against the file when read."""

    kind: ClassVar[str] = "npz"
    spread: ClassVar[float] = 0.0

    path: str
    key: str
    shape: tuple[int, ...]
    num_heldout: int
    flip: bool
    num_classes: int | None = None  # labelled by the file's `labels` array

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        array = images.load_npz(self.path, self.key, self.shape)
        labels = None
        if self.num_classes is not None:
            labels = images.load_npz_labels(self.path, len(array), self.num_classes)
        return images.split_by_seed(array, self.num_heldout, seed, labels=labels)


@dataclass(frozen=True)
class ImageNet32:
    """The downsampled ImageNet 32x32 (Chrabaszcz et al. 2017, image-net.org's .npz files)
    with its 1000 classes: train = its 1.28M training images, held-out sets = the two halves of
    its 50k validation images (the seed is not used)."""

    kind: ClassVar[str] = "imagenet32"
    spread: ClassVar[float] = 0.0
    num_classes: ClassVar[int] = images.IMAGENET32_CLASSES

    path: str
    flip: bool
    shape: tuple[int, ...] = (32, 32, 3)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        return images.imagenet32_splits(self.path)


DataSource = Toy2D | Digits | Cifar10 | ImageNet32 | ImageFolder | Npz
