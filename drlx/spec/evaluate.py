"""The `evaluate:` block: how many samples, which numbers, how plots are drawn."""

from pydantic import Field, PositiveInt

from drlx.spec.base import Block


class Evaluate(Block):
    """Sample-quality numbers use num_samples model samples and as many held-out points."""

    num_samples: PositiveInt = 2000
    num_projections: PositiveInt = 256
    # Sample quality over repeated draws (drlx/evaluate/uncertainty.py): each draw scores
    # draw_size samples against draw_size held-out points, next to the floor (draw_size other
    # held-out points against the same ones); the mean, standard error and 95% interval over
    # num_draws draws are reported. num_samples should be at least num_draws * draw_size.
    num_draws: int = Field(10, ge=2, description="independent draws behind every quality number")
    draw_size: PositiveInt | None = Field(
        None, description="rows per set in a draw (default: the size of one held-out set)"
    )
    heatmap_resolution: PositiveInt = 128
    # A file location, not science: excluded from model_dump and hence from the scientific hash
    # (like the runtime block); the weights' SHA-256 is written into every FID artifact instead.
    inception_weights: str | None = Field(
        None,
        exclude=True,
        description="FID Inception-v3 weights (.safetensors, `drlx convert-inception`); "
        "default: the environment variable DRLX_INCEPTION_WEIGHTS",
    )
