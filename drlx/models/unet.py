"""CDRL's initializer network for images: a DDPM-style U-Net, channels-last (NHWC).

The architecture of the official CDRL code (github.com/AlvinZhuyx/CDRL, models/unet.py, itself
adapted from DDPM / lucidrains' denoising-diffusion-pytorch), with its CIFAR-10 settings:
width 64, channel multipliers (1, 1, 1), 3 residual blocks per resolution, single-head
attention at 16x16 and 8x8, dropout 0.1, 32 groups.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.models.base import AbstractInitializer
from drlx.models.initializer import dropout as apply_dropout
from drlx.models.layers import (
    ConditionEmbedding,
    Conv2d,
    Dense,
    avg_pool2,
    conditioned,
    level_inputs,
    sinusoidal_embedding,
)

GROUP_NORM_EPS = 1e-6  # as in DDPM and the CDRL code


def upsample_nearest(x: Float[Array, " N H W C"]) -> Float[Array, " N 2H 2W C"]:
    """Nearest-neighbour up-sampling by 2 in both spatial axes."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def zero_conv(conv: Conv2d) -> Conv2d:
    """The convolution with its kernel set to zero (its bias is already zero)."""
    return eqx.tree_at(lambda c: c.weight, conv, jnp.zeros_like(conv.weight))


class GroupNorm(eqx.Module):
    """Group normalization of channels-last images, per example: the channels are split into
    `groups` groups, each normalized over (H, W, its channels) of one image, then a learned
    per-channel scale and shift. Never mixes the examples of a batch.

    The number of groups is min(groups, channels) (so narrow test networks work); it must
    divide the number of channels.
    """

    groups: int = eqx.field(static=True)
    weight: Float[Array, " C"]
    bias: Float[Array, " C"]

    def __init__(self, groups: int, channels: int):
        groups = min(groups, channels)
        if channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} channels")
        self.groups = groups
        self.weight = jnp.ones((channels,), jnp.float32)
        self.bias = jnp.zeros((channels,), jnp.float32)

    def __call__(self, x: Float[Array, " N H W C"]) -> Float[Array, " N H W C"]:
        n, h, w, c = x.shape
        g = x.reshape(n, h, w, self.groups, c // self.groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS)
        return g.reshape(n, h, w, c) * self.weight + self.bias


class SelfAttention(eqx.Module):
    """x + proj(softmax(q k^T / sqrt(C)) v), single head over the H W positions of each image;
    q, k, v are 1x1 convolutions (a `Dense` on the channel axis) of GroupNorm(x). `proj` starts
    at zero, so the block starts as the identity (as in DDPM and the CDRL code)."""

    norm: GroupNorm
    qkv: Dense
    proj: Dense

    def __init__(self, channels: int, groups: int, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm = GroupNorm(groups, channels)
        self.qkv = Dense(channels, 3 * channels, False, k1)
        proj = Dense(channels, channels, False, k2)
        self.proj = eqx.tree_at(lambda d: d.weight, proj, jnp.zeros_like(proj.weight))

    def __call__(self, x: Float[Array, " N H W C"]) -> Float[Array, " N H W C"]:
        n, h, w, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("nqc,nkc->nqk", q, k) / math.sqrt(c)
        out = jnp.einsum("nqk,nkc->nqc", jax.nn.softmax(logits, axis=-1), v)
        return x + self.proj(out.reshape(n, h, w, c))


class ResBlock(eqx.Module):
    """shortcut(x) + conv2(drop(silu(GN(conv1(silu(GN(x)))) (1 + scale) + shift))).

    (scale, shift) = Dense(silu(temb)), per example and channel. conv2 starts at zero, so the
    block starts as its shortcut: the identity, or a 1x1 convolution when widths differ.
    `resample` ("down", "up" or None) makes it a BigGAN-style resampling block, as in the CDRL
    code: after the first GroupNorm and SiLU, both the residual branch and the shortcut input
    are average-pooled by 2 (`avg_pool2`) or up-sampled by 2 (nearest neighbour).
    """

    resample: str | None = eqx.field(static=True)
    rate: float = eqx.field(static=True)
    norm1: GroupNorm
    conv1: Conv2d
    temb_proj: Dense
    norm2: GroupNorm
    conv2: Conv2d
    shortcut: Dense | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_dim: int,
        rate: float,
        groups: int,
        key: PRNGKeyArray,
        resample: str | None = None,
    ):
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.resample = resample
        self.rate = rate
        self.norm1 = GroupNorm(groups, in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, False, k1)
        self.temb_proj = Dense(temb_dim, 2 * out_channels, False, k2)
        self.norm2 = GroupNorm(groups, out_channels)
        self.conv2 = zero_conv(Conv2d(out_channels, out_channels, 3, False, k3))
        self.shortcut = (
            Dense(in_channels, out_channels, False, k4) if in_channels != out_channels else None
        )

    def _resample(self, x: Array) -> Array:
        if self.resample == "down":
            return avg_pool2(x)
        if self.resample == "up":
            return upsample_nearest(x)
        return x

    def __call__(
        self,
        x: Float[Array, " N H W I"],
        temb_act: Float[Array, " N E"],
        key: PRNGKeyArray | None,
    ) -> Float[Array, " N H2 W2 O"]:
        """
        Arguments:
            x: inputs.
            temb_act: silu of the level embedding, one row per example.
            key: PRNG key for dropout, or None (no dropout).

        Returns:
            Outputs at the same resolution, or half / double it for a resampling block.
        """
        h = self._resample(jax.nn.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        scale, shift = jnp.split(self.temb_proj(temb_act)[:, None, None, :], 2, axis=-1)
        h = jax.nn.silu(self.norm2(h) * (1.0 + scale) + shift)
        h = self.conv2(apply_dropout(h, self.rate, key))
        return h + (x if self.shortcut is None else self.shortcut(x))


class Stage(eqx.Module):
    """One resolution of a U-Net path: residual blocks, each followed by self-attention or not,
    then an optional resampling block."""

    blocks: tuple[ResBlock, ...]
    attentions: tuple[SelfAttention | None, ...]
    resample: ResBlock | None


class UNetInitializer(AbstractInitializer):
    """mean(x~, t) = x~ + U(x~, t) for NHWC images, U a DDPM-style U-Net (CDRL's initializer).

    - Level embedding: temb = Dense(4W)(silu(Dense(4W)(sinusoidal(level_values[t], W)))); every
      residual block reads silu(temb).
    - Down path: 3x3 conv to W channels; per multiplier m of `channel_mults`, `num_res_blocks`
      residual blocks of width W m, each followed by self-attention when the current resolution
      is in `attention_resolutions`; between resolutions a down-sampling residual block
      (2x2 average pooling inside, see `ResBlock`). Every output is kept as a skip.
    - Middle: residual block, self-attention, residual block.
    - Up path, mirrored: per resolution `num_res_blocks + 1` residual blocks, each taking the
      previous output concatenated with the last skip, with attention as on the way down;
      between resolutions an up-sampling residual block (nearest neighbour inside, followed by
      the block's 3x3 convolutions).
    - Output: GroupNorm, SiLU, 3x3 conv to the input channels, initialised to zero, so
      mean(x~, t) = x~ at initialisation.

    Dropout (`dropout`) in every residual block, only when `mean` is given a key. GroupNorm and
    attention act on each example separately. CIFAR-10 configuration: 3,769,795 parameters
    (plus the T values of `level_values`, not trained).
    """

    resolution: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    level_values: Float[Array, " T"]
    temb: tuple[Dense, Dense]
    conv_in: Conv2d
    down: tuple[Stage, ...]
    mid: tuple[ResBlock, SelfAttention, ResBlock]
    up: tuple[Stage, ...]
    norm_out: GroupNorm
    conv_out: Conv2d
    condition: ConditionEmbedding | None  # added to temb (None: unconditional)

    def __init__(
        self,
        in_channels: int,
        width: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        resolution: int,
        dropout: float,
        groups: int,
        level_values: Float[Array, " T"],
        *,
        key: PRNGKeyArray,
        cardinalities: tuple[int, ...] | None = None,
    ):
        """
        Arguments:
            in_channels: channels C of the images (and of the mean).
            width: base width W (also the size of the sinusoidal embedding, even).
            channel_mults: width multiplier of each resolution, highest resolution first.
            num_res_blocks: residual blocks per resolution on the down path.
            attention_resolutions: spatial sizes at which blocks are followed by attention.
            resolution: spatial size H = W of the inputs (divisible by 2^(resolutions - 1)).
            dropout: drop probability in the residual blocks when `mean` gets a key.
            groups: GroupNorm groups (capped at the channel count).
            level_values: (T,) embedding input of each level (not trained).
            key: PRNG key for the initial weights.
            cardinalities: the condition's slot sizes (None: unconditional).
        """
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if resolution % 2 ** (len(channel_mults) - 1):
            raise ValueError(f"resolution {resolution} cannot be halved {len(channel_mults) - 1}x")
        keys = iter(jax.random.split(key, 8 + 4 * len(channel_mults) * (num_res_blocks + 2)))
        temb_dim = 4 * width
        self.resolution = resolution
        self.width = width
        self.level_values = jnp.asarray(level_values, jnp.float32)
        self.temb = (
            Dense(width, temb_dim, False, next(keys)),
            Dense(temb_dim, temb_dim, False, next(keys)),
        )
        self.conv_in = Conv2d(in_channels, width, 3, False, next(keys))

        def block(i, o, resample=None):
            return ResBlock(i, o, temb_dim, dropout, groups, next(keys), resample)

        def attention(channels, size):
            if size not in attention_resolutions:
                return None
            return SelfAttention(channels, groups, next(keys))

        skips, channels, size = [width], width, resolution
        down = []
        for level, mult in enumerate(channel_mults):
            blocks, attentions = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(channels, width * mult))
                channels = width * mult
                attentions.append(attention(channels, size))
                skips.append(channels)
            resample = None
            if level < len(channel_mults) - 1:
                resample = block(channels, channels, "down")
                size //= 2
                skips.append(channels)
            down.append(Stage(tuple(blocks), tuple(attentions), resample))
        self.down = tuple(down)
        self.mid = (
            block(channels, channels),
            SelfAttention(channels, groups, next(keys)),
            block(channels, channels),
        )
        up = []
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks, attentions = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(channels + skips.pop(), width * mult))
                channels = width * mult
                attentions.append(attention(channels, size))
            resample = None
            if level > 0:
                resample = block(channels, channels, "up")
                size *= 2
            up.append(Stage(tuple(blocks), tuple(attentions), resample))
        self.up = tuple(up)
        self.norm_out = GroupNorm(groups, channels)
        self.conv_out = zero_conv(Conv2d(channels, in_channels, 3, False, next(keys)))
        self.condition = (
            None if cardinalities is None else ConditionEmbedding(cardinalities, temb_dim)
        )

    def embed(
        self, t: Int[Array, " N"], c: Int[Array, " N M"] | None = None
    ) -> Float[Array, " N E"]:
        """silu(temb(t) + the condition's embedding): what every residual block reads."""
        dense0, dense1 = self.temb
        emb = sinusoidal_embedding(level_inputs(self.level_values, t), self.width)
        return jax.nn.silu(conditioned(dense1(jax.nn.silu(dense0(emb))), self.condition, c))

    def mean(
        self,
        x_tilde: Float[Array, " N H W C"],
        t: Int[Array, " N"],
        key: PRNGKeyArray | None = None,
        c: Int[Array, " N M"] | None = None,
    ) -> Float[Array, " N H W C"]:
        """The proposal's mean for tethers x~ = x_{t+1} at levels t.

        Arguments:
            x_tilde: tethers (N, H, W, C), H = W = `resolution`.
            t: levels (N,), integers indexing `level_values`.
            key: PRNG key to enable dropout (training), or None (sampling: deterministic).
            c: conditions (N, M) (None: the null condition of a conditional network).

        Returns:
            Means (N, H, W, C).
        """
        if x_tilde.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(f"expected {self.resolution}x{self.resolution} images")
        temb_act = self.embed(t, c)
        count = 0

        def run(block: ResBlock, h: Array) -> Array:
            nonlocal count
            block_key = None if key is None else jax.random.fold_in(key, count)
            count += 1
            return block(h, temb_act, block_key)

        h = self.conv_in(x_tilde)
        skips = [h]
        for stage in self.down:
            for block, attention in zip(stage.blocks, stage.attentions, strict=True):
                h = run(block, h)
                h = h if attention is None else attention(h)
                skips.append(h)
            if stage.resample is not None:
                h = run(stage.resample, h)
                skips.append(h)
        first, attention, second = self.mid
        h = run(second, attention(run(first, h)))
        for stage in self.up:
            for block, attention in zip(stage.blocks, stage.attentions, strict=True):
                h = run(block, jnp.concatenate([h, skips.pop()], axis=-1))
                h = h if attention is None else attention(h)
            if stage.resample is not None:
                h = run(stage.resample, h)
        return x_tilde + self.conv_out(jax.nn.silu(self.norm_out(h)))
