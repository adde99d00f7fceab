"""The `density:` block: settings of normalized-density estimation (AIS, long-run chains)."""

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from drlx.spec.base import Block


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
    num_annealing_steps: PositiveInt = 200
    num_chains: PositiveInt = 16
    kernel_steps: PositiveInt = 1
    base_proposals: bool = False  # on trained toys: 2.6x the cost for less than its worth
    target_acceptance: float = Field(0.65, gt=0, lt=1)
    top_chains: PositiveInt = 1024
    num_heldout: PositiveInt = 150
    num_quadrature_checks: PositiveInt = 102  # 17 per level of T6
    quadrature_resolution: PositiveInt = Field(192, ge=16)
    check_chains: PositiveInt = 128
    check_annealing_steps: PositiveInt = 600
    check_chains_level_0: PositiveInt = 384
    check_annealing_steps_level_0: PositiveInt = 800
    # long-run chains (drlx.density.longrun): each level's chain continued from its generated
    # sample with the tether fixed, traces recorded every long_run_thin steps
    long_run_steps: PositiveInt = 10_000
    long_run_chains: PositiveInt = Field(512, description="chains per level run long")
    long_run_levels: tuple[NonNegativeInt, ...] = Field((0,), description="levels run long")
    long_run_thin: PositiveInt = Field(100, description="steps between recorded trace points")
    long_run_horizons: tuple[PositiveInt, ...] = Field(
        (100, 1000), description="steps beyond K where quality is measured (also at K and end)"
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
