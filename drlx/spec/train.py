"""The `objective:` and `train:` blocks (docs/method.md §5)."""

from typing import Literal

from pydantic import Field

from drlx.spec.base import Batch, Block, Interval, Steps


class Objective(Block):
    """Recovery likelihood. Level weights on the g-difference: `drl` w_t = sigma_1 / sigma_{t+1}
    (the paper's code); `likelihood` w_t = k_0 / k_t, so every level's conditional
    log-likelihood f = g / k_t counts equally; `uniform` w_t = 1."""

    kind: Literal["recovery_likelihood"] = "recovery_likelihood"
    weighting: Literal["drl", "likelihood", "uniform"] = "drl"


class Train(Block):
    """Adam with linear warm-up and an EMA of the weights; everything reported uses the EMA."""

    num_steps: Steps = 10_000
    batch_size: Batch = 256
    learning_rate: float = Field(1e-4, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    warmup_steps: Interval = 1000
    # constant after the warm-up (the paper's), or cosine: decay to 0 at num_steps
    lr_schedule: Literal["constant", "cosine"] = "constant"
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # clip the energy network's gradient to this global norm (CDRL: 1.0; DRL: none)
    grad_clip: float | None = Field(None, gt=0)
    # train on x + w (u - 1/2), u ~ U[0, 1) per pixel and step: data on a grid of step w (the
    # digits: w = 0.125) become a continuous density. Without it, a level-0 conditional of data
    # with atoms has no bounded maximum likelihood and long trainings diverge (docs/method.md
    # §5.5). None: train on the data as they are (the paper's)
    dequantize: float | None = Field(None, gt=0)
    log_every: Steps = 50
