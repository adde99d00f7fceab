"""Train an experiment from its training array: the engine behind stages/train.py."""

from collections.abc import Callable

import jax
import numpy as np

from drlx.data.pipeline import batch_iterator
from drlx.experiment import Experiment
from drlx.sharding import (
    check_divisible,
    check_process_order,
    make_mesh,
    process_rows,
    replicate,
    shard_local_batch,
)
from drlx.train.checkpoint import Checkpointer
from drlx.train.loop import train_loop
from drlx.train.step import TrainState, init_state, make_train_step


def fit(
    exp: Experiment,
    train: np.ndarray,
    checkpointer: Checkpointer | None = None,
    progress: bool = True,
    on_resume: Callable[[int], None] | None = None,
    conditions: np.ndarray | None = None,
) -> tuple[TrainState, list[dict]]:
    """Train for exp.train.num_steps steps, resuming from the newest good checkpoint if any.

    On several processes (after `jax.distributed.initialize()`), each one reads only its rows
    of every batch from `train` (the same array on every host) and the global batch is
    assembled on the mesh.

    Arguments:
        exp: the compiled experiment.
        train: training examples in data space.
        checkpointer: where checkpoints go (None: no checkpoints, no resumption).
        progress: show a progress bar.
        on_resume: called with the restored checkpoint's step when the run resumes one.
        conditions: the training examples' conditions (N, M), for a conditional experiment
            (`exp.conditioning.values(arrays, "train")`).

    Returns:
        The final state (report `state.ema`) and the logged loss history.
    """
    settings = exp.train
    cond = exp.conditioning
    if (cond is None) != (conditions is None):
        raise ValueError(
            "a conditional experiment needs its training conditions, an unconditional one none"
        )
    mesh = make_mesh(exp.runtime.devices)
    check_divisible(settings.batch_size, mesh, "train.batch_size")
    check_process_order([d.process_index for d in mesh.devices.flat], jax.process_count())
    rows = process_rows(settings.batch_size, jax.process_index(), jax.process_count())
    step = make_train_step(
        exp.ebm,
        exp.train_sampler,
        exp.optimizer,
        exp.weights,
        settings.shared_noise,
        settings.ema_decay,
        exp.initializer_optimizer,
        settings.initializer_ema_decay,
        exp.proposal_std,
        None if cond is None else cond.null,
        0.0 if cond is None else cond.p_uncond,
        settings.dequantize,
    )
    key = exp.key("train")
    batches = batch_iterator(
        train,
        settings.batch_size,
        seed=settings.data_seed,
        flip=settings.flip,
        rows=rows,
        conditions=conditions,
    )
    state = init_state(
        exp.init_network(), exp.optimizer, exp.init_initializer(), exp.initializer_optimizer
    )
    history = []
    resumed = checkpointer.restore(state, key) if checkpointer else None
    if resumed is not None:
        state, history = resumed.state, resumed.history
        batches.set_state(resumed.data_state)
        if on_resume is not None:
            on_resume(int(state.step))

    def save(state: TrainState, history: list[dict]) -> None:
        checkpointer.save(state, batches.get_state(), history, key)

    return train_loop(
        replicate(state, mesh),
        step,
        batches,
        key,
        settings.num_steps,
        settings.log_every,
        progress,
        history=history,
        checkpoint=save if checkpointer else None,
        checkpoint_every=exp.runtime.checkpoint_every,
        place=lambda batch: shard_local_batch(batch, mesh),
    )
