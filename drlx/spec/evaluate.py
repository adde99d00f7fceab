"""The `evaluate:` block: how many samples, which numbers, how plots are drawn."""

from pydantic import Field

from drlx.spec.base import MAX_EXAMPLES, Block, Examples, FilePath, Grid


class Evaluate(Block):
    """Sample-quality numbers use num_samples model samples and as many held-out points."""

    num_samples: Examples = 2000
    # random directions of the sliced Wasserstein distance (at most 65,536; each is a pass
    # over all samples)
    num_projections: int = Field(256, gt=0, le=65_536)
    # Sample quality over repeated draws (drlx/evaluate/uncertainty.py): each draw scores
    # draw_size samples against draw_size held-out points, next to the floor (draw_size other
    # held-out points against the same ones); the mean, standard error and 95% interval over
    # num_draws draws are reported (at most 10,000). num_samples should be at least
    # num_draws * draw_size.
    num_draws: int = Field(
        10, ge=2, le=10_000, description="independent draws behind every quality number"
    )
    draw_size: int | None = Field(
        None,
        gt=0,
        le=MAX_EXAMPLES,
        description="rows per set in a draw (default: the size of one held-out set)",
    )
    heatmap_resolution: Grid = 128
    # A file location, not science: excluded from model_dump and hence from the scientific hash
    # (like the runtime block); the weights' SHA-256 is written into every FID artifact instead.
    inception_weights: FilePath | None = Field(
        None,
        exclude=True,
        description="FID Inception-v3 weights (.safetensors, `drlx convert-inception`); "
        "default: the environment variable DRLX_INCEPTION_WEIGHTS",
    )
