"""The training loop: feeds batches to the jitted step, shows progress, keeps a loss history."""

from collections.abc import Callable, Iterator

import jax
import numpy as np
from jaxtyping import PRNGKeyArray
from tqdm.auto import tqdm

from drlx.train.step import TrainState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or inf loss."""


def train_loop(
    state: TrainState,
    train_step: Callable,
    batches: Iterator[np.ndarray],
    key: PRNGKeyArray,
    num_steps: int,
    log_every: int,
    progress: bool = True,
) -> tuple[TrainState, list[dict]]:
    """Run `num_steps` steps from `state.step`; step i uses fold_in(key, i), so a run's numbers do
    not depend on where it was resumed.

    Arguments:
        state: the starting state.
        train_step: the jitted step (state, batch, key) -> (state, metrics).
        batches: an endless iterator of data batches.
        key: the training key.
        num_steps: the step count to reach.
        log_every: record metrics every this many steps.
        progress: show a progress bar with loss, it/s and ETA.

    Returns:
        The final state and a list of {"step", "loss", "grad_norm"} records.

    Raises:
        NonFiniteLossError: when a logged loss is NaN or inf (the last good state is kept by the
            caller's checkpoints; nothing is written from a diverged state).
    """
    history: list[dict] = []
    start = int(state.step)
    bar = tqdm(total=num_steps, initial=start, disable=not progress, desc="train", unit="it")
    for i in range(start, num_steps):
        state, metrics = train_step(state, next(batches), jax.random.fold_in(key, i))
        if (i + 1) % log_every == 0 or i + 1 == num_steps:
            record = {"step": i + 1, **{k: float(v) for k, v in metrics.items()}}
            if not np.isfinite(record["loss"]):
                bar.close()
                raise NonFiniteLossError(
                    f"loss became {record['loss']} at step {i + 1}; lower the learning rate or "
                    "the Langevin step size (sampler.step_size_b2)"
                )
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
        bar.update(1)
    bar.close()
    return state, history
