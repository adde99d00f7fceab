"""Device mesh from the runtime block; batches and chains split over devices, model replicated.

One mesh axis, "data". On several hosts, call `jax.distributed.initialize()` before anything
else (see README); `jax.devices()` then lists every host's devices and the same code runs.
"""

import equinox as eqx
import jax
import numpy as np
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


def replicate(tree, mesh: Mesh):
    """Place every array of a pytree (a model, a train state) whole on every device."""
    return eqx.filter_shard(tree, NamedSharding(mesh, PartitionSpec()))
