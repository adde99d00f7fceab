"""Many samples in fixed-size jitted chunks; sample i depends only on (key, i)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, PRNGKeyArray

from drlx.energy import ConditionalEBM
from drlx.experiment import Experiment
from drlx.guidance import Guide
from drlx.keys import per_example_normal
from drlx.progress import progress_bar
from drlx.samplers.base import AbstractSampler
from drlx.samplers.progressive import generate
from drlx.sharding import check_divisible, make_mesh, replicate, shard_batch, to_host


@eqx.filter_jit
def _chunk(
    ebm, sampler: AbstractSampler, key: PRNGKeyArray, index: Array, shape, tweedie: bool, guide
):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    # levels 0..T-1 fold in their index (in generate); the top noise folds in T
    x_top = per_example_normal(keys, ebm.schedule.num_levels, jnp.zeros((len(index), *shape)))
    return generate(ebm, sampler, x_top, keys, tweedie, guide)[0]


def sample_many(
    ebm: ConditionalEBM,
    sampler: AbstractSampler,
    key: PRNGKeyArray,
    num: int,
    shape: tuple[int, ...],
    chunk: int,
    progress: bool = True,
    mesh: Mesh | None = None,
    tweedie: bool = False,
    guide: Guide | None = None,
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
        mesh: devices to split each chunk's chains over (None: the default device). On several
            processes (a mesh over every host's devices) each runs its share of the chains, all
            of them must call this, and every one gets all the samples back.
        tweedie: end with Tweedie's denoising step.
        guide: a guided target (docs/method.md §12) whose conditions cover all `num` samples
            (sample i gets conditions[i]); None: the model as it is.

    Returns:
        (num, *shape) float32 samples x_0.
    """
    out = []
    if mesh is not None:
        check_divisible(chunk, mesh, "the sampling chunk (runtime.sample_batch_size)")
        ebm = replicate(ebm, mesh)
    bar = progress_bar(num, "sample", "sample", progress)
    for start in range(0, num, chunk):
        index = jnp.arange(start, start + chunk)
        part = None if guide is None else _guide_rows(guide, start, chunk)
        if mesh is not None:
            index = shard_batch(index, mesh)
            if part is not None:
                part = Guide(shard_batch(part.conditions, mesh), replicate(part.weights, mesh))
        out.append(to_host(_chunk(ebm, sampler, key, index, shape, tweedie, part)))
        bar.update(min(chunk, num - start))
    bar.close()
    return np.concatenate(out)[:num]


def _guide_rows(guide: Guide, start: int, chunk: int) -> Guide:
    """Rows start .. start + chunk of a guide's conditions (the last chunk padded by repeating
    the last row; its samples are trimmed)."""
    conditions = np.asarray(guide.conditions)
    rows = np.minimum(np.arange(start, start + chunk), len(conditions) - 1)
    return Guide(jnp.asarray(conditions[rows]), guide.weights)


def sample(
    exp: Experiment,
    ebm: ConditionalEBM,
    num: int | None = None,
    guide: Guide | None = None,
    stream: str = "sample",
) -> np.ndarray:
    """Samples x_0 of a trained experiment, from white noise down the levels with the
    evaluation sampler (then Tweedie's step if the spec asks): sample i uses
    fold_in(exp.key("sample"), i), so the first samples do not change with `num`, the chunk
    size or the device count.

    Arguments:
        exp: the experiment.
        ebm: its conditional EBMs, `exp.ebm(network, initializer)` (usually EMA weights).
        num: how many (default: the spec's evaluate.num_samples).
        guide: a conditional model's guide, one row of conditions per sample
            (`drlx.classifier_free`, `drlx.compose`, `drlx.plain`; docs/method.md §12).
        stream: the name of the random stream (exp.key(stream)); samples of two guides
            drawn from one stream see the same noise (common random numbers).

    On several processes every one calls this and gets all the samples (see `sample_many`);
    tests/test_multihost.py checks they equal one process's.

    Returns:
        (num, *shape) float32 samples.
    """
    num = exp.evaluate.num_samples if num is None else num
    runtime = exp.runtime
    return sample_many(
        ebm,
        exp.eval_sampler,
        exp.key(stream),
        num,
        exp.shape,
        min(runtime.sample_batch_size, num),
        runtime.progress,
        make_mesh(runtime.devices),
        exp.tweedie,
        guide,
    )
