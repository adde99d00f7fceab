"""Training: state, the jitted step, the loop."""

from drlx.train.loop import NonFiniteLossError, train_loop
from drlx.train.step import TrainState, init_state, make_train_step

__all__ = ["NonFiniteLossError", "TrainState", "init_state", "make_train_step", "train_loop"]
