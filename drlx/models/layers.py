"""Small building blocks shared by the energy networks."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
}


def sinusoidal_embedding(t: Float[Array, " *B"], dim: int, max_period: float = 10_000.0) -> Array:
    """Transformer-style embedding of a (level) index: [sin(t w_k), cos(t w_k)], w_k geometric.

    Arguments:
        t: level indices (any shape), as floats.
        dim: embedding size (even).
        max_period: longest period of the frequencies.

    Returns:
        Array of shape t.shape + (dim,).
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
