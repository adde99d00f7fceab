"""The `sampler:` block: the Langevin chain of each conditional EBM (REFERENCE section 4)."""

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from drlx.spec.base import Block


class ULA(Block):
    """Unadjusted Langevin (the paper's): s_t^2 = b^2 c_t^2 sigma_{t+1}^2, K steps per level."""

    kind: Literal["ula"]
    num_steps: PositiveInt = 30
    step_size_b2: float = Field(2e-4, gt=0, description="b^2 in s_t^2 = b^2 c_t^2 sigma_{t+1}^2")
    # drl: c_t^2 = sigmabar_t / sigmabar_0 (the paper's code); tether: c_t^2 = 1, so every level
    # takes the same fraction b^2 of its tether's variance per step.
    step_size_rule: Literal["drl", "tether"] = "drl"
    noise_scale_train: float = Field(1.0, ge=0)
    noise_scale_eval: float = Field(0.99, ge=0)


SamplerSpec = Annotated[ULA, Field(discriminator="kind")]
