"""The training loop: feeds batches to the jitted step, shows progress, keeps a loss history."""

from collections.abc import Callable, Iterator

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from drlx.errors import DrlxError
from drlx.progress import progress_bar
from drlx.train.step import TrainState

# Data lives in [-1, 1] and every chain starts at a noisy copy of it, so a negative this far out
# means the Langevin chains have diverged (seen: |y-| ~ 1e12 with a still finite loss of -8e12
# after 3000 good steps, on digits with a batch of 256).
CHAIN_DIVERGED_ABS = 1e3
# The energy can also run away while the chains stay put (MALA rejecting every proposal): then
# the model finds a positive e^(gap) times likelier than its chain's negative. Chains that sample
# the model give tens at most (seen, batch maxima over the first 100-300 steps, when they are
# largest: 17.6 on eight_gaussians_cdrl, 8.3 on the checkerboard, 3.0 on digits_class, 1.8 on
# digits_cdrl, 1.7 on digits); a MALA run that ran away passed 1e3 at step 150 and 1e10 later.
# This many per dimension means the chains no longer sample the model.
ENERGY_GAP_DIVERGED = 1e4


class NonFiniteLossError(DrlxError, FloatingPointError):
    """Training diverged: a NaN or inf loss or gradient, Langevin chains far off the data, or an
    energy that ran away from its chains."""


def check_record(record: dict) -> None:
    """Raise NonFiniteLossError if a logged step's record shows divergence: a non-finite loss or
    gradient, chains far off the data, or an energy that ran away from its chains."""
    advice = (
        "; the last checkpoint before it is kept. Lower train.learning_rate or"
        " sampler.step_size_b2; for data on a coarse grid (the digits' 17 grey levels), set"
        " train.dequantize to the grid's step (docs/method.md §5.5)"
    )
    if not (np.isfinite(record["loss"]) and np.isfinite(record["grad_norm"])):
        raise NonFiniteLossError(
            f"training diverged at step {record['step']}: loss {record['loss']}, gradient norm "
            f"{record['grad_norm']}" + advice
        )
    chain = record.get("chain_max_abs", 0.0)
    if not chain <= CHAIN_DIVERGED_ABS:  # NaN too
        level = record.get("chain_max_level")
        where = "" if level is None else f" (level {int(level)})"
        raise NonFiniteLossError(
            f"the Langevin chains diverged at step {record['step']}: the largest |y-| of the "
            f"batch is {chain:.3g}{where}; data lie in [-1, 1], limit {CHAIN_DIVERGED_ABS:g}; loss "
            f"{record['loss']:.3g}" + advice
        )
    gap = record.get("energy_gap_per_dim", 0.0)
    if not gap <= ENERGY_GAP_DIVERGED:
        raise NonFiniteLossError(
            f"the energy ran away at step {record['step']}: the model finds a positive "
            f"{gap:.3g} nats per dimension likelier than its chain's negative (limit "
            f"{ENERGY_GAP_DIVERGED:g}), so the chains no longer sample it (MALA rejecting every "
            f"proposal, or steps too short for the energy's slopes); loss {record['loss']:.3g}"
            + advice
        )


def train_loop(
    state: TrainState,
    train_step: Callable,
    batches: Iterator[np.ndarray],
    key: PRNGKeyArray,
    num_steps: int,
    log_every: int,
    progress: bool = True,
    history: list[dict] | None = None,
    checkpoint: Callable[[TrainState, list[dict]], None] | None = None,
    checkpoint_every: int = 0,
    place: Callable = lambda batch: batch,
) -> tuple[TrainState, list[dict]]:
    """Run from `state.step` to `num_steps`; step i uses fold_in(key, i), so a run's numbers do
    not depend on where it was resumed.

    Arguments:
        state: the starting state.
        train_step: the jitted step (state, batch, key[, conditions]) -> (state, metrics).
        batches: an endless iterator of data batches (or of (batch, conditions) pairs),
            positioned at `state.step`.
        key: the training key.
        num_steps: the step count to reach.
        log_every: record metrics every this many steps.
        progress: show a progress bar with loss, it/s and ETA.
        history: records logged before `state.step` (when resuming).
        checkpoint: called with (state, history) every `checkpoint_every` steps and at the end,
            only after that step's loss and gradient were checked finite.
        checkpoint_every: steps between checkpoints (0: only at the end).
        place: puts a host batch on the devices (sharding).

    Returns:
        The final state and the list of {"step", "loss", "grad_norm"} records.

    Raises:
        NonFiniteLossError: when a loss or gradient norm is NaN or inf; nothing is saved from
            the diverged state, so the last checkpoint is the last good one.
    """
    history = list(history or [])
    start = int(state.step)
    bar = progress_bar(num_steps, "train", "it", progress, initial=start)
    try:
        for i in range(start, num_steps):
            batch = next(batches)  # an array, or (array, conditions) for a conditional model
            data = tuple(map(place, batch)) if isinstance(batch, tuple) else (place(batch),)
            state, metrics = train_step(state, data[0], jax.random.fold_in(key, i), *data[1:])
            step = i + 1
            log = step % log_every == 0 or step == num_steps
            save = checkpoint is not None and (
                step == num_steps or (checkpoint_every and step % checkpoint_every == 0)
            )
            if log or save:
                record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
                check_record(record)
                record.pop("energy_gap_per_dim", None)  # checked, not logged
                if log:
                    history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                if save:
                    checkpoint(state, history)
            bar.update(1)
    finally:
        bar.close()
    return state, history
