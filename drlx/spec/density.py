"""The `density:` block: settings of normalized-density estimation (AIS, long-run chains)."""

from typing import Annotated

from pydantic import Field, model_validator

from drlx.spec.base import (
    MAX_GRID,
    MAX_LEVELS,
    MAX_STEPS,
    Batch,
    Block,
    ChainSteps,
    Examples,
    Steps,
)

Level = Annotated[int, Field(ge=0, lt=MAX_LEVELS)]  # a level's index
Horizon = Annotated[int, Field(gt=0, le=MAX_STEPS)]


class Density(Block):
    """AIS from the Gaussian tether to each conditional EBM; read by the density stage."""

    # AIS (drlx.density.ais): K temperatures beta_k = (k/K)^4, per temperature kernel_steps MALA
    # steps (each followed by an independence proposal from the base if base_proposals), the
    # step size steered to target_acceptance; num_chains chains per x~, top_chains for the top
    # level's single log Z. Bound on num_heldout held-out examples; AIS is checked against
    # quadrature on num_quadrature_checks tethers over all levels (2D data only), with
    # check_chains chains and check_annealing_steps temperatures; level 0, whose narrow modes
    # make the importance weights heavy-tailed, gets check_chains_level_0 chains and
    # check_annealing_steps_level_0 temperatures (on the trained toys 4x the chains cut its
    # error 4x, 0.045 -> 0.011 nats; 3x with 800 temperatures: 0.014-0.019).
    num_annealing_steps: ChainSteps = 200
    num_chains: Batch = 16
    kernel_steps: ChainSteps = 1
    base_proposals: bool = False  # on trained toys: 2.6x the cost for less than its worth
    target_acceptance: float = Field(0.65, gt=0, lt=1)
    top_chains: Batch = 1024
    num_heldout: Examples = 150
    num_quadrature_checks: Batch = 102  # 17 per level of T6
    quadrature_resolution: int = Field(192, ge=16, le=MAX_GRID)
    check_chains: Batch = 128
    check_annealing_steps: ChainSteps = 600
    check_chains_level_0: Batch = 384
    check_annealing_steps_level_0: ChainSteps = 800
    # long-run chains (drlx.density.longrun): each level's chain continued from its generated
    # sample with the tether fixed, traces recorded every long_run_thin steps
    long_run_steps: Steps = 10_000
    long_run_chains: Batch = Field(512, description="chains per level run long")
    # YAML lists: the containers are not strict, their items are
    long_run_levels: tuple[Level, ...] = Field(
        (0,), strict=False, max_length=MAX_LEVELS, description="levels run long"
    )
    long_run_thin: Steps = Field(100, description="steps between recorded trace points")
    long_run_horizons: tuple[Horizon, ...] = Field(
        (100, 1000),
        strict=False,
        max_length=1000,
        description="steps beyond K where quality is measured (also at K and end)",
    )
    long_run_drift_ratio: float = Field(
        1.5, gt=1, description="drifts if SWD ratio at the end / at K exceeds this"
    )

    @model_validator(mode="after")
    def _long_run_grid(self):
        steps, thin = self.long_run_steps, self.long_run_thin
        if steps % thin:
            raise ValueError(
                f"long_run_steps ({steps}) must be a multiple of long_run_thin ({thin})"
            )
        bad = [h for h in self.long_run_horizons if h % thin or h >= steps]
        if bad:
            raise ValueError(
                f"long_run_horizons {bad} must be multiples of long_run_thin ({thin}) "
                f"below long_run_steps ({steps})"
            )
        return self
