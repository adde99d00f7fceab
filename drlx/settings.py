"""The typed settings each engine takes, filled in by drlx/builder.py from a validated spec.

Plain frozen records: no defaults that matter to a result (those live in the spec classes), no
imports of engine code, so a stage that needs one setting does not depend on every engine.
"""

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how an experiment runs; never changes a result.

    Attributes:
        devices: "all" or a device count (the mesh, drlx.sharding.make_mesh).
        progress: show progress bars.
        sample_batch_size: chains run at once when sampling (and the budget of AIS chunks).
        checkpoint_every: training steps between checkpoints (0: only at the end).
        conv_backend: the requested convolution backend, "xla", "onednn" or "auto"; resolved
            (drlx.ops.conv.resolve_backend) when a network is made.
    """

    devices: str | int
    progress: bool
    sample_batch_size: int
    checkpoint_every: int
    conv_backend: str = "auto"


@dataclass(frozen=True)
class TrainSettings:
    """Training (drlx.train.fit).

    Attributes:
        num_steps: optimizer steps to reach.
        batch_size: examples per step (global, over every device and host).
        log_every: steps between records of the loss history.
        ema_decay: decay of the EMA of the weights (what is reported).
        shared_noise: draw x_t and x_{t+1} with the same noise (CDRL's variance reduction).
        data_seed: seed of the batches' order and flips.
        flip: random left-right flips of training images.
        initializer_ema_decay: decay of the EMA of CDRL's initializer (None: DRL, none).
        dequantize: width w of the uniform noise added to each training example per step
            (None: none).
    """

    num_steps: int
    batch_size: int
    log_every: int
    ema_decay: float
    shared_noise: bool
    data_seed: int
    flip: bool
    initializer_ema_decay: float | None
    dequantize: float | None = None


@dataclass(frozen=True)
class EvaluateSettings:
    """Sample generation and sample-quality numbers (drlx.evaluate).

    Attributes:
        num_samples: samples generated from noise, scored against as many held-out points.
        num_projections: random directions of the sliced Wasserstein distance.
        heatmap_resolution: grid points per axis of the 2D density plots.
        inception_weights: FID Inception-v3 weights (None: $DRLX_INCEPTION_WEIGHTS).
        num_draws: draws behind every sample-quality number (its mean, se and interval).
        draw_size: rows per set in a draw (None: the size of one held-out set).
    """

    num_samples: int
    num_projections: int
    heatmap_resolution: int
    inception_weights: str | None
    num_draws: int
    draw_size: int | None


@dataclass(frozen=True)
class TaskSettings:
    """Guided and composed generation of a conditional model (drlx.evaluate.guided).

    Attributes:
        guidance_weights: classifier-free guidance strengths w to sample at.
        compositions: (name, ((condition vector, weight), ...)) of each composition.
        num_samples: samples per guidance strength and per composition.
        num_draws: draws behind the sample-quality numbers at each strength.
        chain_steps: Langevin steps per level of guided and composed chains (None:
            generation's).
        step_scale: their step size as a fraction of the level's s_t^2.
    """

    guidance_weights: tuple[float, ...]
    compositions: tuple[tuple[str, tuple[tuple[tuple[int, ...], float], ...]], ...]
    num_samples: int
    num_draws: int
    chain_steps: int | None = None
    step_scale: float = 1.0


class AISSettings(NamedTuple):
    """How hard AIS works (static under jit).

    Attributes:
        num_chains: chains per problem; the estimate is their log-mean-exp.
        num_temperatures: K, the number of rises of beta from 0 to 1.
        kernel_steps: MALA steps after each rise.
        base_proposals: follow each MALA step by an independence proposal from the base (one
            more network evaluation; worth it in low dimension, useless in high).
        target_acceptance: the acceptance rate each problem's step size is steered to.
    """

    num_chains: int
    num_temperatures: int
    kernel_steps: int = 1
    base_proposals: bool = True
    target_acceptance: float = 0.65


@dataclass(frozen=True)
class DensitySettings:
    """Normalized density (drlx.density.estimate): the held-out bound and, for 2D data, AIS
    checked against quadrature.

    Attributes:
        ais: AIS of the tethered levels in the bound.
        top_chains: chains of the top level's single log Z.
        num_heldout: held-out examples in the bound.
        num_quadrature_checks: tethers over all levels checked against 2D quadrature.
        quadrature_resolution: grid points per axis of the quadrature.
        check_chains, check_annealing_steps: AIS of the check at levels 1 and above.
        check_chains_level_0, check_annealing_steps_level_0: AIS of the check at level 0.
        dequantize_seed: seed of the uniform dequantization of 8-bit images.
    """

    ais: AISSettings
    top_chains: int
    num_heldout: int
    num_quadrature_checks: int
    quadrature_resolution: int
    check_chains: int
    check_annealing_steps: int
    check_chains_level_0: int
    check_annealing_steps_level_0: int
    dequantize_seed: int


@dataclass(frozen=True)
class LongRunSettings:
    """Long-run chains (drlx.density.longrun).

    Attributes:
        steps: chain steps beyond generation's K.
        chains: chains per level.
        levels: the levels run long.
        thin: steps between trace records.
        horizons: steps beyond K where quality is measured (also at K and at the end).
        drift_ratio: a level drifts if its SWD ratio at the end over at K exceeds this.
        num_projections: random directions of the sliced Wasserstein distance.
    """

    steps: int
    chains: int
    levels: tuple[int, ...]
    thin: int
    horizons: tuple[int, ...]
    drift_ratio: float
    num_projections: int
