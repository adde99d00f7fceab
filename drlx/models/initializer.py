"""CDRL's initializer for vectors (2D toys, flattened digits), and what the initializers share.

An initializer proposes the start of a level's Langevin chain: N(mean(x~, t), var_t I) in the
EBM's coordinates y (docs/method.md §3.1, §11), with the residual mean
mean(x~, t) = x~ + net(x~, t). One network serves every level; the variance is fixed elsewhere.

The concrete initializers extend `AbstractInitializer.mean` by an optional PRNG key: given a key
(training) dropout is on, with None (sampling) the mean is deterministic.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.models.base import AbstractInitializer
from drlx.models.layers import (
    ACTIVATIONS,
    ConditionEmbedding,
    Dense,
    conditioned,
    level_inputs,
    sinusoidal_embedding,
)


def dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    """Inverted dropout: each entry zeroed with probability `rate`, the rest divided by
    1 - rate; the identity when `key` is None or `rate` is 0.

    Arguments:
        x: activations (any shape).
        rate: drop probability, in [0, 1).
        key: PRNG key, or None for no dropout.

    Returns:
        An array of the shape of x.
    """
    if key is None or rate == 0.0:
        return x
    # drawn flat and reshaped: XLA:CPU compiles a multi-axis random draw several times slower
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.size,)).reshape(x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def zero_dense(layer: Dense) -> Dense:
    """The layer with its weight set to zero (its bias is already zero)."""
    return eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))


class MLPInitializer(AbstractInitializer):
    """mean(x~, t) = x~ + W_out h_L, h_l = drop(act(W_l h_{l-1} + b_l + U_l e(t))), h_0 = x~.

    For vectors (2D toys) and small images given flattened (8x8 digits: 64 values, reshaped
    back). The level enters as in `MLPEnergy`:
    e(t) = Dense(act(Dense(sinusoidal(level_values[t], embed_dim)))), added to every hidden
    layer through its own dense map. The output layer starts at zero, so mean(x~, t) = x~ at
    initialisation. Dropout (rate `dropout`, default 0: none) after every hidden activation,
    only when `mean` is given a key.
    """

    embed_dim: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    level_values: Float[Array, " T"]
    temb: tuple[Dense, Dense]
    layers: tuple[Dense, ...]
    level_proj: tuple[Dense, ...]
    out: Dense
    condition: ConditionEmbedding | None  # added to temb (None: unconditional)

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        embed_dim: int,
        activation: str,
        level_values: Float[Array, " T"],
        *,
        key: PRNGKeyArray,
        dropout: float = 0.0,
        cardinalities: tuple[int, ...] | None = None,
    ):
        """
        Arguments:
            dim: number of coordinates D of one (flattened) example.
            width: hidden width.
            depth: number of hidden layers.
            embed_dim: size of the sinusoidal level embedding (even).
            activation: a name in `ACTIVATIONS`.
            level_values: (T,) embedding input of each level (not trained).
            key: PRNG key for the initial weights.
            dropout: drop probability of the hidden activations when `mean` gets a key.
            cardinalities: the condition's slot sizes (None: unconditional).
        """
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        keys = jax.random.split(key, 2 * depth + 3)
        self.embed_dim = embed_dim
        self.activation = activation
        self.dropout = dropout
        self.level_values = jnp.asarray(level_values, jnp.float32)
        self.temb = (Dense(embed_dim, width, False, keys[0]), Dense(width, width, False, keys[1]))
        sizes = [dim] + [width] * depth
        self.layers = tuple(
            Dense(i, o, False, k)
            for i, o, k in zip(sizes[:-1], sizes[1:], keys[2 : depth + 2], strict=True)
        )
        self.level_proj = tuple(Dense(width, width, False, k) for k in keys[depth + 2 : -1])
        # Zero output layer: the proposal starts centred on the tether x~.
        self.out = zero_dense(Dense(width, dim, False, keys[-1]))
        self.condition = None if cardinalities is None else ConditionEmbedding(cardinalities, width)

    @property
    def _act(self) -> Callable:
        return ACTIVATIONS[self.activation]

    def mean(
        self,
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        key: PRNGKeyArray | None = None,
        c: Int[Array, " N M"] | None = None,
    ) -> Float[Array, " N *D"]:
        """The proposal's mean for tethers x~ = x_{t+1} at levels t.

        Arguments:
            x_tilde: tethers (N, *D); flattened inside.
            t: levels (N,), integers indexing `level_values`.
            key: PRNG key to enable dropout (training), or None (sampling: deterministic).
            c: conditions (N, M) (None: the null condition of a conditional network).

        Returns:
            Means of the shape of x_tilde.
        """
        n = x_tilde.shape[0]
        h = x_tilde.reshape(n, -1)
        emb = sinusoidal_embedding(level_inputs(self.level_values, t), self.embed_dim)
        dense0, dense1 = self.temb
        temb = conditioned(dense1(self._act(dense0(emb))), self.condition, c)
        for i, (layer, proj) in enumerate(zip(self.layers, self.level_proj, strict=True)):
            h = self._act(layer(h) + proj(temb))
            h = dropout(h, self.dropout, None if key is None else jax.random.fold_in(key, i))
        return x_tilde + self.out(h).reshape(x_tilde.shape)
