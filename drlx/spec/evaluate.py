"""The `evaluate:` block: how many samples, which numbers, how plots are drawn."""

from pydantic import Field, PositiveInt

from drlx.spec.base import Block


class Evaluate(Block):
    """Sample-quality numbers use num_samples model samples and as many held-out points."""

    num_samples: PositiveInt = 2000
    num_projections: PositiveInt = 256
    heatmap_resolution: PositiveInt = 128
    # A file location, not science: excluded from model_dump and hence from the scientific hash
    # (like the runtime block); the weights' SHA-256 is written into every FID artifact instead.
    inception_weights: str | None = Field(
        None,
        exclude=True,
        description="FID Inception-v3 weights (.safetensors, `drlx convert-inception`); "
        "default: the environment variable DRLX_INCEPTION_WEIGHTS",
    )
