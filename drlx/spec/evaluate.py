"""The `evaluate:` block: how many samples, which numbers, how plots are drawn."""

from pydantic import PositiveInt

from drlx.spec.base import Block


class Evaluate(Block):
    """Sample-quality numbers use num_samples model samples and as many held-out points."""

    num_samples: PositiveInt = 2000
    num_projections: PositiveInt = 256
    heatmap_resolution: PositiveInt = 128
