"""Train an experiment from its training array: the engine behind stages/train.py."""

import numpy as np

from drlx.data.pipeline import batch_iterator
from drlx.spec.build import Experiment
from drlx.train.loop import train_loop
from drlx.train.step import TrainState, init_state, make_train_step


def fit(exp: Experiment, train: np.ndarray, progress: bool = True) -> tuple[TrainState, list[dict]]:
    """Train from scratch for spec.train.num_steps steps.

    Arguments:
        exp: the compiled experiment.
        train: training examples in data space.
        progress: show a progress bar.

    Returns:
        The final state (report `state.ema`) and the logged loss history.
    """
    spec = exp.spec
    step = make_train_step(
        exp.ebm,
        exp.train_sampler,
        exp.optimizer,
        exp.weights,
        spec.diffusion.shared_noise,
        spec.train.ema_decay,
    )
    batches = batch_iterator(train, spec.train.batch_size, seed=spec.seed, flip=exp.flip)
    state = init_state(exp.init_network(), exp.optimizer)
    return train_loop(
        state, step, batches, exp.key("train"), spec.train.num_steps, spec.train.log_every, progress
    )
