"""Shared configuration for every spec block: strict, frozen, no unknown keys; and the bounded
size types the blocks use."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Block(BaseModel):
    """Base of every spec block: unknown keys are errors and a loaded spec never changes.

    Strict: a value must already have its field's type; nothing is converted. An integer field
    takes no bool (`true`), string (`"32"`) or float (`32.0`); a float field takes an int but no
    string (`"1e-3"`, which the loader reads as a float when unquoted); a bool field takes only
    `true`/`false`. Numbers must be finite: no NaN or infinity, written (`.nan`, `.inf`) or
    overflowing (`1e400`). Tuple fields are read from YAML lists: they opt out of strictness
    with `Field(strict=False)` for the container only; their items stay strict.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ---- upper bounds on sizes ---------------------------------------------------------------------
# Generous (10-1000x what any shipped spec uses) but finite, so that a typo such as 10**12 is
# refused when the spec is read instead of exhausting memory (or running for ever) later.
# Examples drawn, held out, sampled or scored; the largest shipped count is 50,000 (FID).
MAX_EXAMPLES = 10_000_000
# Rows or chains processed at once (batches, AIS and long-run chains, quadrature checks); the
# largest shipped value is 4096 chains.
MAX_BATCH = 1 << 20
# Optimizer steps and their intervals (warm-up, logging, checkpoints, long-run lengths); the
# largest shipped value is 1,000,000 training steps.
MAX_STEPS = 100_000_000
# Langevin or AIS steps of one chain per level (K, temperatures, kernel steps); shipped: <= 800.
MAX_CHAIN_STEPS = 1_000_000
# Noise levels T (shipped: up to 1000) and DDPM steps behind them (shipped: up to 1001).
MAX_LEVELS = 10_000
MAX_DIFFUSION_STEPS = 100_000
# Units or channels of a layer, embedding sizes, Fourier features, GroupNorm groups;
# shipped: <= 512.
MAX_WIDTH = 8192
# Layers of an MLP, residual blocks per resolution; shipped: <= 8.
MAX_LAYERS = 256
# A channel multiplier (shipped: <= 2) and the number of resolutions (shipped: 4; each halves the
# image side, so 10 take 1024 pixels down to 1).
MAX_CHANNEL_MULT = 64
MAX_RESOLUTIONS = 10
# Height or width of an image (shipped: 64) and its channels (shipped: 3).
MAX_IMAGE_SIDE = 1024
MAX_CHANNELS = 64
# Points per side of a 2D grid (quadrature, heat maps): 4096^2 = 16.8 M points; shipped: <= 192.
MAX_GRID = 4096

Examples = Annotated[int, Field(gt=0, le=MAX_EXAMPLES)]
Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]
Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
Interval = Annotated[int, Field(ge=0, le=MAX_STEPS)]  # warm-up steps, checkpoint period: 0 is off
ChainSteps = Annotated[int, Field(gt=0, le=MAX_CHAIN_STEPS)]
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
Layers = Annotated[int, Field(gt=0, le=MAX_LAYERS)]
ChannelMult = Annotated[int, Field(gt=0, le=MAX_CHANNEL_MULT)]
ImageSide = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)]
Grid = Annotated[int, Field(gt=0, le=MAX_GRID)]
# a file location: not empty, at most PATH_MAX (4096) characters
FilePath = Annotated[str, Field(min_length=1, max_length=4096)]
