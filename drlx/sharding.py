"""Device mesh from the runtime block; batches and chains split over devices, model replicated.

One mesh axis, "data". On several hosts (processes), call `jax.distributed.initialize()` before
anything else (see README); `jax.devices()` then lists every host's devices, each host reads only
its own rows of a batch (`process_rows`) and `shard_local_batch` assembles the global batch.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(devices: str | int) -> Mesh:
    """A one-axis mesh over all devices ("all") or the first `devices` of them."""
    available = jax.devices()
    if devices == "all":
        chosen = available
    elif devices > len(available):
        raise ValueError(
            f"runtime.devices is {devices} but only {len(available)} are visible "
            f"({available[0].platform}); on a CPU, XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} simulates more"
        )
    else:
        chosen = available[:devices]
    return Mesh(np.asarray(chosen), ("data",))


def check_divisible(batch: int, mesh: Mesh, what: str) -> None:
    """Batches split evenly over devices; say which setting to change when they do not."""
    if batch % mesh.size:
        raise ValueError(f"{what} ({batch}) must be a multiple of the device count ({mesh.size})")


def shard_batch(array, mesh: Mesh):
    """Place an array split along its first axis over the mesh."""
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec("data")))


def process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The rows of a global batch that one process (host) feeds: the batch split evenly, in
    process order.

    Arguments:
        batch_size: examples per global batch.
        process_index: this process, 0..process_count-1 (`jax.process_index()`).
        process_count: the number of processes (`jax.process_count()`).

    Returns:
        (start, stop): this process's rows [start, stop) of every global batch.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} is not in 0..{process_count - 1}")
    if batch_size % process_count:
        raise ValueError(
            f"the batch size ({batch_size}) must be a multiple of the process (host) count "
            f"({process_count}): every host feeds the same number of rows"
        )
    per_process = batch_size // process_count
    return process_index * per_process, (process_index + 1) * per_process


def check_process_order(owners: Sequence[int], process_count: int) -> None:
    """Check that the process slices of `process_rows` line up with the mesh: along the "data"
    axis, every process owns one block of devices, all blocks the same size, in process order.

    `jax.devices()` lists devices by process on CPU and TPU, so a mesh over all of them
    (`runtime.devices: all`) passes; the first n devices of several hosts usually do not.

    Arguments:
        owners: the process index of each mesh device in mesh order
            (`[d.process_index for d in mesh.devices.flat]`).
        process_count: the number of processes.
    """
    owners = list(owners)
    per_process, rest = divmod(len(owners), process_count)
    expected = [p for p in range(process_count) for _ in range(per_process)]
    if rest or owners != expected:
        raise ValueError(
            f"the mesh's devices belong to processes {owners}; with {process_count} processes "
            "each must own the same number of devices, grouped in process order "
            "(runtime.devices: all does this)"
        )


def shard_local_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch, split along its first axis over the mesh, from this process's
    rows of it (`process_rows`); on one process it equals `shard_batch(local, mesh)`.

    Arguments:
        local: this process's rows of the global batch, the same count on every process.
        mesh: the one-axis mesh, its devices in process order (`check_process_order`).

    Returns:
        The global array of shape (len(local) * process count, *local.shape[1:]).
    """
    global_shape = (len(local) * jax.process_count(), *local.shape[1:])
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def to_host(x) -> np.ndarray:
    """A (possibly sharded over several hosts) array as one whole numpy array on every host.

    Arguments:
        x: a jax.Array (or anything numpy takes).

    Returns:
        The global value; gathered from every process when this one does not hold all of it
        (a collective: then every process must call it, in the same order).
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)  # a replicated array: every host holds all of it


def is_primary() -> bool:
    """Whether this is process 0, the one that writes files every host would write alike (a
    stage's outputs, checkpoint clean-up); True on one process."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (all must call it, in the same order);
    nothing on one process. After the primary wrote a file, the others may read it."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def replicate(tree, mesh: Mesh):
    """Place every array of a pytree (a model, a train state) whole on every device."""
    return eqx.filter_shard(tree, NamedSharding(mesh, PartitionSpec()))
