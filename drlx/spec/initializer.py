"""The `initializer:` block: CDRL's initializer, a Gaussian proposal for the start of every
level's Langevin chain (docs/method.md §11). Absent: DRL, chains start at the tether."""

from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat

from drlx.spec.base import (
    MAX_IMAGE_SIDE,
    MAX_RESOLUTIONS,
    Block,
    ChannelMult,
    Interval,
    Layers,
    Width,
)

LevelEmbedding = Literal["index", "logsnr"]


class _Initializer(Block):
    """What every initializer shares: its optimizer (AdamW), clipping and EMA.

    The proposal of level t is N(x~ + net(x~, t), v_t I) in the EBM's variable y, v_t the
    diffusion's posterior variance of the level; the network learns to move its mean to where
    the EBM's chains go (loss ||sg(y_K) - y_0||^2, summed over coordinates, batch mean).
    """

    # CDRL's official settings: AdamW 1e-5, clipping at 1, EMA 0.9999
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: NonNegativeFloat = 0.0
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    warmup_steps: Interval = 0
    grad_clip: float | None = Field(1.0, gt=0, description="global gradient-norm clip (None: off)")
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    # the network sees the level as its index or as CDRL's continuous time of the logSNR
    level_embedding: LevelEmbedding = "logsnr"


class MLPInitializer(_Initializer):
    """An MLP on the flattened tether (2D toys, 8x8 digits)."""

    kind: Literal["mlp"]
    width: Width = 256
    depth: Layers = 3
    embed_dim: Width = 64
    activation: Literal["silu", "softplus", "leaky_relu", "gelu"] = "silu"


class UNetInitializer(_Initializer):
    """CDRL's U-Net for images (CIFAR-10: width 64, multipliers (1, 1, 1), 3 residual blocks per
    resolution, attention at 16x16 and 8x8, dropout 0.1, GroupNorm 32)."""

    kind: Literal["unet"]
    width: Width = 64
    # YAML lists: the containers are not strict, their items are
    channel_mults: tuple[ChannelMult, ...] = Field(
        (1, 1, 1), strict=False, min_length=1, max_length=MAX_RESOLUTIONS
    )
    num_res_blocks: Layers = 3
    attention_resolutions: tuple[Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)], ...] = Field(
        (16, 8), strict=False, max_length=MAX_RESOLUTIONS
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    groups: Width = 32


InitializerSpec = Annotated[MLPInitializer | UNetInitializer, Field(discriminator="kind")]
