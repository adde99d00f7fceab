"""The `runtime:` block: where and how the experiment runs. Not part of the scientific hash."""

from typing import Annotated, Literal

from pydantic import Field

from drlx.spec.base import Batch, Block, Interval

# devices of one run: a typo guard far above any machine (a TPU v5p pod has 8960 chips)
MAX_DEVICES = 65_536


class Runtime(Block):
    """Devices and progress display; changing these must not change any result."""

    devices: Literal["all"] | Annotated[int, Field(gt=0, le=MAX_DEVICES)] = "all"
    progress: bool = True
    sample_batch_size: Batch = Field(4096, description="chains run at once when sampling")
    checkpoint_every: Interval = Field(1000, description="steps between checkpoints; 0: end only")
    conv_backend: Literal["xla", "onednn", "auto"] = Field(
        "auto",
        description=(
            "what runs the networks' convolutions on the CPU: XLA's kernels, oneDNN's "
            "(drlx/ops, built at set-up) or auto (oneDNN when built and JAX runs on the CPU); "
            "XLA's on accelerators. Results agree to float32 rounding (~1e-6)"
        ),
    )
