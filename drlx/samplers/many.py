"""Many samples in fixed-size jitted chunks; sample i depends only on (key, i)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray
from tqdm.auto import tqdm

from drlx.energy import ConditionalEBM
from drlx.keys import per_example_normal
from drlx.samplers.progressive import generate
from drlx.samplers.ula import ULA


@eqx.filter_jit
def _chunk(ebm: ConditionalEBM, sampler: ULA, key: PRNGKeyArray, index: jax.Array, shape):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    # levels 0..T-1 fold in their index (in generate); the top noise folds in T
    x_top = per_example_normal(keys, ebm.schedule.num_levels, jnp.zeros((len(index), *shape)))
    return generate(ebm, sampler, x_top, keys)[0]


def sample_many(
    ebm: ConditionalEBM,
    sampler: ULA,
    key: PRNGKeyArray,
    num: int,
    shape: tuple[int, ...],
    chunk: int,
    progress: bool = True,
) -> np.ndarray:
    """Generate `num` samples from white noise, `chunk` chains at a time.

    Arguments:
        ebm: the conditional EBMs (usually with EMA weights).
        sampler: the evaluation sampler.
        key: the sampling key; sample i uses fold_in(key, i) for all its randomness.
        num: number of samples.
        shape: shape of one sample.
        chunk: chains per jitted call (the last call is padded and trimmed).
        progress: show a progress bar.

    Returns:
        (num, *shape) float32 samples x_0.
    """
    out = []
    for start in tqdm(range(0, num, chunk), disable=not progress, desc="sample", unit="chunk"):
        index = jnp.arange(start, start + chunk)
        out.append(np.asarray(_chunk(ebm, sampler, key, index, shape)))
    return np.concatenate(out)[:num]
