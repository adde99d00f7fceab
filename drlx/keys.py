"""Randomness conventions: one root key; consumers fold in their name; examples their index.

Example i's randomness depends only on (key, i), never on the batch it sits in or on how the
batch is sharded over devices, so results do not change with batch size or device count.
"""

import zlib

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def named_key(root: PRNGKeyArray, name: str) -> PRNGKeyArray:
    """The key of one consumer: fold_in(root, crc32(name))."""
    return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def example_keys(key: PRNGKeyArray, n: int, start: int | Array = 0) -> PRNGKeyArray:
    """Keys of examples start .. start+n-1: fold_in(key, i)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, start + jnp.arange(n))


def fold_each(keys: PRNGKeyArray, data: int | Array) -> PRNGKeyArray:
    """fold_in(keys[i], data) for every example key."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def per_example_normal(keys: PRNGKeyArray, tag: int | Array, like: Array) -> Array:
    """Standard normal noise shaped like `like`; example i's draw uses fold_in(keys[i], tag)."""
    draw = lambda k: jax.random.normal(k, like.shape[1:], like.dtype)  # noqa: E731
    return jax.vmap(draw)(fold_each(keys, tag))


def per_example_uniform(keys: PRNGKeyArray, tag: int | Array, like: Array) -> Array:
    """U[0, 1) noise shaped like `like`; example i's draw uses fold_in(keys[i], tag)."""
    draw = lambda k: jax.random.uniform(k, like.shape[1:], like.dtype)  # noqa: E731
    return jax.vmap(draw)(fold_each(keys, tag))
