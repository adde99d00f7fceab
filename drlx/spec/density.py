"""The `density:` block: settings of normalized-density estimation (AIS, long-run chains)."""

from pydantic import PositiveInt

from drlx.spec.base import Block


class Density(Block):
    """AIS from the Gaussian tether to each conditional EBM; read by the density stage."""

    num_annealing_steps: PositiveInt = 200
    num_chains: PositiveInt = 16
    num_heldout: PositiveInt = 1000
    long_run_steps: PositiveInt = 10_000
