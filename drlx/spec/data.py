"""The `data:` block: which dataset, how much of it, how it is split."""

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from drlx.spec.base import MAX_CHANNELS, Block, Examples, FilePath, ImageSide

# classes of a labelled dataset (ImageNet has 1000)
NumClasses = Annotated[int, Field(gt=1, le=100_000)]
ToyName = Literal["eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "rings"]


class Toy2DData(Block):
    """A 2D toy distribution generated from the experiment's seed (drlx.data.toy2d)."""

    kind: Literal["toy2d"]
    name: ToyName
    num_train: Examples = 50_000
    num_heldout: Examples = 5_000


class DigitsData(Block):
    """scikit-learn's embedded 8x8 digits (1797 images, no download), split at random by the
    experiment seed into train and two disjoint held-out sets (drlx.data.images)."""

    kind: Literal["digits"]
    num_heldout: PositiveInt = Field(297, le=898)  # 1797 = 1203 train + 2 x 297
    flip: bool = False  # digits are not mirror-symmetric


class Cifar10Data(Block):
    """CIFAR-10 from the official binary archive: train = the 50k training images, held-out
    sets = the two halves of the 10k test set."""

    kind: Literal["cifar10"]
    path: FilePath = "data/raw/cifar10/cifar-10-binary.tar.gz"
    flip: bool = True


class ImageNet32Data(Block):
    """The downsampled ImageNet 32x32 (Chrabaszcz et al. 2017) from image-net.org's .npz files
    (train_data_batch_1..10.npz, val_data.npz) in the folder `path`, with its 1000 classes:
    train = the 1.28M training images, held-out sets = the two halves of the 50k validation
    images."""

    kind: Literal["imagenet32"]
    path: FilePath = "data/raw/imagenet32"  # a folder
    flip: bool = True


class ImageFolderData(Block):
    """A folder of .jpg/.png/.webp images (CelebA, LSUN exports), centre-cropped to squares,
    resized to size x size, split at random by the experiment seed."""

    kind: Literal["image_folder"]
    path: FilePath
    size: ImageSide
    num_heldout: Examples = 5_000
    flip: bool = True
    # labelled by subfolder: one subfolder per class (their sorted names are classes 0, 1, ...),
    # this many; None: unlabelled, every image under the folder
    num_classes: NumClasses | None = None


class NpzData(Block):
    """Images stored in an .npz: uint8 (N, H, W, C) or floats in [-1, 1], split at random by
    the experiment seed. `shape` (H, W, C) is stated here, not read from the file, so that
    building an experiment reads no files; preparing the data checks it against the array."""

    kind: Literal["npz"]
    path: FilePath
    key: str = Field("images", min_length=1)
    # a YAML list [H, W, C]: the container is not strict, its items are
    shape: tuple[ImageSide, ImageSide, Annotated[int, Field(gt=0, le=MAX_CHANNELS)]] = Field(
        strict=False
    )
    num_heldout: Examples = 5_000
    flip: bool = False
    # labelled: the file also holds an integer array `labels` (N,) with values 0 .. num_classes-1;
    # None: unlabelled
    num_classes: NumClasses | None = None


DataSpec = Annotated[
    Toy2DData | DigitsData | Cifar10Data | ImageNet32Data | ImageFolderData | NpzData,
    Field(discriminator="kind"),
]
