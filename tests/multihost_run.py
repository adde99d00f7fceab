"""Helper for test_multihost.py: one of two real JAX processes on this machine (loopback only).

Run as `multihost_run.py PORT PROCESS_ID SPEC OUT.npz` with
XLA_FLAGS=--xla_force_host_platform_device_count=2, twice (process ids 0 and 1):
1. each process feeds only its own rows of each global batch, the batch is assembled on the
   4-device mesh of both processes, a jitted function computes per-example sums and a batch
   mean, and the results come back whole to each host;
2. `fit` trains the SPEC experiment on `train_data()` over both processes.
Everything is saved to OUT.npz for the test to compare with one process.
"""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from drlx.builder import build
from drlx.data.pipeline import batch_iterator
from drlx.sharding import check_process_order, make_mesh, process_rows, shard_local_batch, to_host
from drlx.spec import load_spec
from drlx.train.fit import fit

NUM_PROCESSES, BATCH, STEPS = 2, 8, 3


def images() -> np.ndarray:
    """The images every host holds (as in fit: the same array everywhere)."""
    return np.random.default_rng(0).normal(size=(40, 4, 3, 2)).astype(np.float32)


def train_data() -> np.ndarray:
    """The 2D training set of the `fit` run."""
    return np.random.default_rng(1).normal(size=(512, 2)).astype(np.float32) * 0.5


def train(spec_path: str) -> tuple[list[float], list[np.ndarray]]:
    """Run `fit`; return the logged losses and the final network's arrays."""
    state, history = fit(build(load_spec(spec_path)), train_data(), progress=False)
    leaves = jax.tree.leaves(eqx.filter(state.network, eqx.is_inexact_array))
    return [h["loss"] for h in history], [to_host(x) for x in leaves]


def batch_stats(mesh):
    """Per-example sums (split over the mesh) and the batch mean of x^2 (replicated)."""

    def stats(x):
        return jnp.sum(x, axis=(1, 2, 3)), jnp.mean(x**2)

    out = (NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec()))
    return jax.jit(stats, out_shardings=out)


def main(port: int, process_id: int, spec_path: str, out_path: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process on CPU
    address = f"127.0.0.1:{port}"
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=NUM_PROCESSES,
        process_id=process_id,
        coordinator_bind_address=address,
        initialization_timeout=30,
    )
    assert jax.process_count() == NUM_PROCESSES and jax.process_index() == process_id
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2, jax.devices()
    mesh = make_mesh("all")
    check_process_order([d.process_index for d in mesh.devices.flat], jax.process_count())
    rows = process_rows(BATCH, process_id, NUM_PROCESSES)
    batches = batch_iterator(images(), BATCH, seed=4, flip=True, rows=rows)
    stats = batch_stats(mesh)
    local, whole, sums, means = [], [], [], []
    for _ in range(STEPS):
        mine = next(batches)
        x = shard_local_batch(mine, mesh)
        assert x.shape == (BATCH, 4, 3, 2) and not x.is_fully_addressable
        # this process's devices hold exactly its rows, in order
        held = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
        np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in held]), mine)
        assert held[0].index[0].start == rows[0] and held[-1].index[0].stop == rows[1]
        per_example, mean = stats(x)
        local.append(mine)
        whole.append(to_host(x))
        sums.append(to_host(per_example))
        means.append(float(mean))  # replicated: every host reads it, as train_loop does
    losses, params = train(spec_path)
    np.savez(
        out_path, local=np.stack(local), whole=np.stack(whole), sums=np.stack(sums),
        means=np.asarray(means, np.float64), rows=np.asarray(rows),
        losses=np.asarray(losses, np.float64), **{f"param_{i}": p for i, p in enumerate(params)},
    )  # fmt: skip
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
