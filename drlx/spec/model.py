"""The `model:` block: the energy network g_theta(y, t)."""

from typing import Annotated, Literal

from pydantic import Field

from drlx.spec.base import MAX_RESOLUTIONS, MAX_WIDTH, Block, ChannelMult, Layers, Width


class MLPEnergy(Block):
    """MLP energy for vectors with a sinusoidal level embedding and a level-dependent read-out."""

    kind: Literal["mlp"]
    width: Width = 128
    depth: Layers = 3
    embed_dim: Width = 64
    activation: Literal["silu", "softplus", "leaky_relu", "gelu"] = "silu"
    # f = g / k_t with k_t = s_t^2 (DRL) or sigma_{t+1}^2 (see drlx/energy.py)
    output_scale: Literal["step_size", "tether_variance"] = "step_size"
    # the level as the network sees it: its index t, or CDRL's continuous time of its logSNR
    level_embedding: Literal["index", "logsnr"] = "index"
    fourier_features: int = Field(0, ge=0, le=MAX_WIDTH)
    fourier_scale: float = Field(1.0, gt=0)


class ResNetEnergy(Block):
    """DRL's image energy network net_res_temb2 (docs/method.md §6.3)."""

    kind: Literal["resnet"]
    width: Width = 128
    blocks_per_resolution: Layers = 8
    # one multiplier per resolution, a YAML list (the container is not strict, its items are)
    channel_mults: tuple[ChannelMult, ...] = Field(
        (1, 2, 2, 2), strict=False, min_length=1, max_length=MAX_RESOLUTIONS
    )
    embed_dim: Width = 128
    spectral_norm: bool = True
    level_embedding: Literal["index", "logsnr"] = "index"
    # f = g / k_t with k_t = s_t^2 (DRL) or sigma_{t+1}^2 (see drlx/energy.py)
    output_scale: Literal["step_size", "tether_variance"] = "step_size"


ModelSpec = Annotated[MLPEnergy | ResNetEnergy, Field(discriminator="kind")]
