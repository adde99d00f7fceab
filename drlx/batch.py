"""Per-example helpers for batches shaped (N, *D): every engine works on such batches."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def broadcast_to_example(v: Float[Array, " N"], like: Array) -> Array:
    """Reshape per-example scalars to broadcast against a batch shaped like `like`."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def sum_squares(v: Float[Array, " N *D"]) -> Float[Array, " N"]:
    """||v_i||^2 of each example."""
    return jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1)
