"""The `data:` block: which dataset, how much of it, how it is split."""

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from drlx.spec.base import Block

ToyName = Literal["eight_gaussians", "checkerboard", "two_moons", "swiss_roll", "rings"]


class Toy2DData(Block):
    """A 2D toy distribution generated from the experiment's seed (drlx.data.toy2d)."""

    kind: Literal["toy2d"]
    name: ToyName
    num_train: PositiveInt = 50_000
    num_heldout: PositiveInt = 5_000


DataSpec = Annotated[Toy2DData, Field(discriminator="kind")]
