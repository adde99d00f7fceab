"""The `runtime:` block: where and how the experiment runs. Not part of the scientific hash."""

from typing import Literal

from pydantic import Field, PositiveInt

from drlx.spec.base import Block


class Runtime(Block):
    """Devices and progress display; changing these must not change any result."""

    devices: Literal["all"] | PositiveInt = "all"
    progress: bool = True
    sample_batch_size: PositiveInt = Field(4096, description="chains run at once when sampling")
    checkpoint_every: int = Field(1000, ge=0, description="steps between checkpoints; 0: end only")
