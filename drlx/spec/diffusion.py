"""The `diffusion:` block: the noise schedule and how noisy pairs are drawn (docs/method.md §2)."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from drlx.spec.base import MAX_DIFFUSION_STEPS, MAX_LEVELS, Block


class _Noise(Block):
    num_levels: int = Field(6, gt=0, le=MAX_LEVELS)
    # CDRL draws x_t and x_{t+1} from x with the same eps ("variance reduction"); DRL does not.
    shared_noise: bool = False


class DRLLinear(_Noise):
    """DRL's schedule exactly as the official code builds it (only valid for small T)."""

    kind: Literal["drl_linear"]
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    num_diffusion_steps: Literal[1000] = 1000

    @model_validator(mode="after")
    def _index_formula_valid(self):
        if self.num_levels < 2 or 1000 // ((self.num_levels - 1) * 2) == 0:
            raise ValueError(
                f"drl_linear needs 2 <= num_levels <= 501, found {self.num_levels}; "
                "use kind: linear for larger T"
            )
        return self


class Linear(_Noise):
    """T-general linear-beta schedule: level i groups consecutive DDPM steps (T = N-1: one each)."""

    kind: Literal["linear"]
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    num_diffusion_steps: int = Field(1000, gt=0, le=MAX_DIFFUSION_STEPS)

    @model_validator(mode="after")
    def _enough_steps(self):
        if self.num_levels > self.num_diffusion_steps - 1:
            raise ValueError(
                f"num_levels ({self.num_levels}) must be at most num_diffusion_steps - 1 "
                f"({self.num_diffusion_steps - 1})"
            )
        return self


class CosineLogSNR(_Noise):
    """CDRL's schedule, cosine in logSNR between logsnr_max (data end) and logsnr_min."""

    kind: Literal["cosine_logsnr"]
    logsnr_min: float = -5.1
    logsnr_max: float = 9.8

    @model_validator(mode="after")
    def _ordered(self):
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max})"
            )
        return self


DiffusionSpec = Annotated[DRLLinear | Linear | CosineLogSNR, Field(discriminator="kind")]
