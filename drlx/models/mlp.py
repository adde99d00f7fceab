"""An MLP energy network g_theta(y, t) for vectors (2D toys)."""

from collections.abc import Callable
from typing import Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.models.base import AbstractEnergyNetwork
from drlx.models.layers import (
    ACTIVATIONS,
    ConditionEmbedding,
    conditioned,
    level_inputs,
    sinusoidal_embedding,
)


class MLPEnergy(AbstractEnergyNetwork):
    """g(y, t) = <h_L(y, t), R act(temb(t))>, h_l = act(W_l h_{l-1} + U_l temb(t)).

    The level enters through a sinusoidal embedding mapped by a two-layer MLP (as in DRL's
    net_res_temb2), added to every hidden layer and used again in the read-out.
    """

    embed_dim: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    level_values: Float[Array, " T"] | None
    fourier: Float[Array, " D F"] | None
    temb: eqx.nn.MLP
    layers: tuple[eqx.nn.Linear, ...]
    level_proj: tuple[eqx.nn.Linear, ...]
    readout: eqx.nn.Linear
    condition: ConditionEmbedding | None

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        embed_dim: int,
        activation: str,
        fourier_features: int,
        fourier_scale: float,
        key: PRNGKeyArray,
        level_values: Float[Array, " T"] | None = None,
        cardinalities: tuple[int, ...] | None = None,
    ):
        keys = jax.random.split(key, 2 * depth + 3)
        self.condition = None if cardinalities is None else ConditionEmbedding(cardinalities, width)
        act = ACTIVATIONS[activation]
        self.embed_dim = embed_dim
        self.activation = activation
        self.level_values = level_values  # None: the level index itself is embedded
        self.temb = eqx.nn.MLP(embed_dim, width, width, 1, activation=act, key=keys[0])
        if fourier_features:
            # fixed random Fourier features (Tancik et al. 2020): lift 2D inputs so an MLP can
            # fit sharp, many-moded densities; frozen (stop_gradient in `energy`).
            shape = (dim, fourier_features)
            self.fourier = fourier_scale * jax.random.normal(keys[-2], shape)
            dim = dim + 2 * fourier_features
        else:
            self.fourier = None
        sizes = [dim] + [width] * depth
        self.layers = tuple(
            eqx.nn.Linear(i, o, key=k)
            for i, o, k in zip(sizes[:-1], sizes[1:], keys[1 : depth + 1], strict=True)
        )
        self.level_proj = tuple(
            eqx.nn.Linear(width, width, key=k) for k in keys[depth + 1 : 2 * depth + 1]
        )
        # Zero read-out: g = 0 at initialisation, so the first chains follow the tether alone
        # instead of the drift of a random network (which f = g / s^2 would amplify).
        readout = eqx.nn.Linear(width, width, key=keys[-1])
        self.readout = eqx.tree_at(
            lambda r: (r.weight, r.bias),
            readout,
            (jnp.zeros_like(readout.weight), jnp.zeros_like(readout.bias)),
        )

    @property
    def _act(self) -> Callable:
        return ACTIVATIONS[self.activation]

    def embed(self, t: Int[Array, " N"], c: Int[Array, " N M"] | None = None) -> tuple[Array, ...]:
        """Everything that depends on the level (and condition) only: per-layer biases and the
        read-out vector. Computed once per chain, not once per Langevin step."""
        steps = level_inputs(self.level_values, t)
        temb = jax.vmap(self.temb)(sinusoidal_embedding(steps, self.embed_dim))
        temb = conditioned(temb, self.condition, c)
        biases = tuple(jax.vmap(proj)(temb) for proj in self.level_proj)
        return (*biases, jax.vmap(self.readout)(self._act(temb)))

    def energy(self, y: Float[Array, " N D"], context: tuple[Array, ...]) -> Float[Array, " N"]:
        """g(y, t) given `embed(t)`."""
        *biases, read = context
        h = y = y.reshape(y.shape[0], -1)  # images enter as vectors of pixels
        if self.fourier is not None:
            angles = 2.0 * jnp.pi * (y @ jax.lax.stop_gradient(self.fourier))
            h = jnp.concatenate([y, jnp.sin(angles), jnp.cos(angles)], axis=-1)
        for layer, bias in zip(self.layers, biases, strict=True):
            h = self._act(h @ layer.weight.T + layer.bias + bias)
        return jnp.sum(h * read, axis=-1)

    def power_iteration(self) -> Self:
        """No spectral normalization here: returns self."""
        return self

    def precompute(self) -> Self:
        """Nothing to precompute for a chain: returns self."""
        return self
