"""DRL's image energy network (net_res_temb2, docs/method.md §6.3), channels-last."""

from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.models.base import AbstractEnergyNetwork
from drlx.models.layers import (
    ConditionEmbedding,
    Conv2d,
    Dense,
    add_example_bias,
    avg_pool2,
    conditioned,
    level_inputs,
    power_iterate,
    precompute_convs,
    sinusoidal_embedding,
)

# Initial per-channel scale of a block's second convolution (DRL: init_scale 1e-10): every block
# starts as (almost exactly) its shortcut.
RESIDUAL_INIT_SCALE = 1e-10


def _act(x: Array) -> Array:
    return jax.nn.leaky_relu(x, 0.2)


class ResidualBlock(eqx.Module):
    """x -> shortcut(x) + conv2(act(conv1(act(x)) + level bias)), conv2 scaled per channel.

    The level bias Dense(act(temb)) is computed by the network's `embed`, from `temb_proj`.
    """

    conv1: Conv2d
    temb_proj: Dense
    conv2: Conv2d
    shortcut: Conv2d | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_dim: int,
        spectral_norm: bool,
        key: PRNGKeyArray,
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv1 = Conv2d(in_channels, out_channels, 3, spectral_norm, k1)
        self.temb_proj = Dense(temb_dim, out_channels, spectral_norm, k2)
        self.conv2 = Conv2d(
            out_channels, out_channels, 3, spectral_norm, k3, init_scale=RESIDUAL_INIT_SCALE
        )
        self.shortcut = (
            Conv2d(in_channels, out_channels, 3, spectral_norm, k4)
            if in_channels != out_channels
            else None
        )

    def __call__(
        self, x: Float[Array, " N H W I"], level_bias: Float[Array, " N O"]
    ) -> Float[Array, " N H W O"]:
        h = add_example_bias(self.conv1(_act(x)), level_bias)
        h = self.conv2(_act(h))
        return h + (x if self.shortcut is None else self.shortcut(x))


class ResNetEnergy(AbstractEnergyNetwork):
    """g(y, t) = <sum_{space} relu(features(y, t)), Dense(act(temb(t)))> for NHWC images.

    Features: 3x3 conv in; per resolution `blocks_per_resolution` residual blocks of width
    width * mult, then 2x2 average pooling (not after the last resolution). No attention, no
    normalization layers; leaky ReLU (0.2); spectral normalization (one power iteration per
    `power_iteration()` call) on every conv and every dense layer if `spectral_norm`.
    Level embedding: sinusoidal(level_values[t], or t, embed_dim) -> Dense(4 width) -> act ->
    Dense(4 width).
    """

    embed_dim: int = eqx.field(static=True)
    level_values: Float[Array, " T"] | None
    temb: tuple[Dense, Dense]
    conv_in: Conv2d
    stages: tuple[tuple[ResidualBlock, ...], ...]
    readout: Dense
    condition: ConditionEmbedding | None  # added to temb (None: unconditional)

    def __init__(
        self,
        in_channels: int,
        width: int,
        blocks_per_resolution: int,
        channel_mults: tuple[int, ...],
        embed_dim: int,
        spectral_norm: bool,
        key: PRNGKeyArray,
        level_values: Float[Array, " T"] | None = None,
        cardinalities: tuple[int, ...] | None = None,
    ):
        num_blocks = blocks_per_resolution * len(channel_mults)
        k_t0, k_t1, k_in, k_out, *k_blocks = jax.random.split(key, 4 + num_blocks)
        temb_dim = 4 * width
        self.embed_dim = embed_dim
        self.level_values = level_values  # None: the level index itself is embedded
        self.temb = (
            Dense(embed_dim, temb_dim, spectral_norm, k_t0),
            Dense(temb_dim, temb_dim, spectral_norm, k_t1),
        )
        self.conv_in = Conv2d(in_channels, width, 3, spectral_norm, k_in)
        stages, channels, keys = [], width, iter(k_blocks)
        for mult in channel_mults:
            blocks = []
            for _ in range(blocks_per_resolution):
                out = width * mult
                blocks.append(ResidualBlock(channels, out, temb_dim, spectral_norm, next(keys)))
                channels = out
            stages.append(tuple(blocks))
        self.stages = tuple(stages)
        self.readout = Dense(temb_dim, channels, spectral_norm, k_out)
        self.condition = (
            None if cardinalities is None else ConditionEmbedding(cardinalities, temb_dim)
        )

    def embed(self, t: Int[Array, " N"], c: Int[Array, " N M"] | None = None) -> tuple[Array, ...]:
        """Level-only (and condition-only) parts, once per chain: each block's level bias and
        the read-out vector."""
        dense0, dense1 = self.temb
        steps = level_inputs(self.level_values, t)
        temb = dense1(_act(dense0(sinusoidal_embedding(steps, self.embed_dim))))
        temb = conditioned(temb, self.condition, c)
        a = _act(temb)
        biases = tuple(block.temb_proj(a) for stage in self.stages for block in stage)
        return (*biases, self.readout(a))

    def energy(self, y: Float[Array, " N H W C"], context: tuple[Array, ...]) -> Float[Array, " N"]:
        """g(y, t) given `embed(t)`."""
        *biases, read = context
        biases = iter(biases)
        h = self.conv_in(y)
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = avg_pool2(h)
            for block in stage:
                h = block(h, next(biases))
        features = jnp.sum(jax.nn.relu(h), axis=(1, 2))
        return jnp.sum(features * read, axis=-1)

    def power_iteration(self) -> Self:
        """A copy with every spectral-norm vector advanced by one power iteration."""
        return power_iterate(self)

    def precompute(self) -> Self:
        """The same function of (y, t) with every convolution's kernel normalized, scaled and
        flipped once (`Conv2d.precompute`), for a chain whose weights are fixed."""
        return precompute_convs(self)
