"""Helper for test_multihost.py: one of two real JAX processes on this machine (loopback only).

Run as `multihost_run.py PORT PROCESS_ID SPEC OUT.npz SHARED` with
XLA_FLAGS=--xla_force_host_platform_device_count=2, twice (process ids 0 and 1); SHARED is a
folder both processes see (as a shared filesystem gives several hosts) holding `data.npz`:
1. each process feeds only its own rows of each global batch, the batch is assembled on the
   4-device mesh of both processes, a jitted function computes per-example sums and a batch
   mean, and the results come back whole to each host;
2. `fit` trains the SPEC experiment on `train_data()` over both processes;
3. the same training with Orbax checkpoints in SHARED/checkpoints is interrupted after step
   INTERRUPT (its last checkpoint is older), and a new `fit` resumes it to the end;
4. process 0 saves the resumed run's EMA weights to SHARED/model.eqx and both run the sample
   stage (stages/sample.py) on them, writing SHARED/samples.npz and SHARED/samples.png.
Everything is saved to OUT.npz for the test to compare with one process.
"""

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from drlx.builder import build
from drlx.data.pipeline import batch_iterator
from drlx.io import save_model
from drlx.sharding import (
    barrier,
    check_process_order,
    is_primary,
    make_mesh,
    process_rows,
    shard_local_batch,
    to_host,
)
from drlx.spec import load_spec
from drlx.train.checkpoint import Checkpointer
from drlx.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
NUM_PROCESSES, BATCH, STEPS = 2, 8, 3
# the interrupted run stops when it reaches this step, before saving it: the resumed run
# restores the previous checkpoint (runtime.checkpoint_every) and redoes the steps in between
INTERRUPT = 6


def images() -> np.ndarray:
    """The images every host holds (as in fit: the same array everywhere)."""
    return np.random.default_rng(0).normal(size=(40, 4, 3, 2)).astype(np.float32)


def train_data() -> np.ndarray:
    """The 2D training set of the `fit` run."""
    return np.random.default_rng(1).normal(size=(512, 2)).astype(np.float32) * 0.5


def network_arrays(state) -> list[np.ndarray]:
    leaves = jax.tree.leaves(eqx.filter(state.network, eqx.is_inexact_array))
    return [to_host(x) for x in leaves]


def train(spec_path: str) -> tuple[list[float], list[np.ndarray]]:
    """Run `fit`; return the logged losses and the final network's arrays."""
    state, history = fit(build(load_spec(spec_path)), train_data(), progress=False)
    return [h["loss"] for h in history], network_arrays(state)


class Interrupted(Exception):
    """The run was stopped (a preemption, a kill) before it saved a checkpoint."""


class InterruptedCheckpointer(Checkpointer):
    """Checkpoints until the step to save reaches `stop`, then stops the run unsaved."""

    def __init__(self, directory, spec_hash: str, stop: int):
        super().__init__(directory, spec_hash)
        self.stop = stop

    def save(self, state, *args) -> None:
        if int(state.step) >= self.stop:
            raise Interrupted(int(state.step))
        super().save(state, *args)


def train_interrupted_and_resumed(spec_path: str, folder: Path):
    """Train with checkpoints in `folder`, stopped at step INTERRUPT; then resume in a new `fit`
    call (a new Checkpointer, as a restarted run makes). Returns the final state, the history,
    the steps on disk after the interruption and at the end, and the restored steps."""
    exp = build(load_spec(spec_path))
    try:
        checkpointer = InterruptedCheckpointer(folder, exp.training_hash, INTERRUPT)
        fit(exp, train_data(), checkpointer, progress=False)
    except Interrupted:
        pass
    else:
        raise AssertionError(f"the run was not interrupted at step {INTERRUPT}")
    checkpointer = Checkpointer(folder, exp.training_hash)
    interrupted_steps = list(checkpointer.manager.all_steps())
    restored: list[int] = []
    state, history = fit(exp, train_data(), checkpointer, False, on_resume=restored.append)
    barrier("multihost_run: resumed run saved")  # process 0 empties the trash after its last save
    final_steps = sorted(p.name for p in checkpointer.directory.iterdir())  # and any leftovers
    return state, history, interrupted_steps, final_steps, restored


def batch_stats(mesh):
    """Per-example sums (split over the mesh) and the batch mean of x^2 (replicated)."""

    def stats(x):
        return jnp.sum(x, axis=(1, 2, 3)), jnp.mean(x**2)

    out = (NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec()))
    return jax.jit(stats, out_shardings=out)


def run_sample_stage(spec_path: str, shared: Path) -> tuple[np.ndarray, list[str]]:
    """Run stages/sample.py's main on SHARED/model.eqx; return the samples this process got
    back from `sample` and the files it wrote."""
    sys.path.insert(0, str(ROOT / "stages"))
    import sample as stage  # stages/sample.py

    got, written = [], []
    sample, write_arrays, samples_figure = stage.sample, stage.write_arrays, stage.samples_figure

    def recorded_sample(*args, **kwargs):
        got.append(sample(*args, **kwargs))
        return got[-1]

    def recorded_write(function):
        def write(path, *args, **kwargs):
            written.append(str(path))
            return function(path, *args, **kwargs)

        return write

    stage.sample = recorded_sample
    stage.write_arrays = recorded_write(write_arrays)
    stage.samples_figure = recorded_write(samples_figure)
    files = {name: str(shared / name) for name in ("data.npz", "model.eqx", "samples.npz")}
    sys.argv = [
        "stages/sample.py", "--spec", spec_path, "--data", files["data.npz"],
        "--model", files["model.eqx"], "--out", files["samples.npz"],
        "--plot", str(shared / "samples.png"),
    ]  # fmt: skip
    stage.main()
    assert len(got) == 1
    return got[0], written


def main(port: int, process_id: int, spec_path: str, out_path: str, shared: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process on CPU
    # the three `fit` calls compile the same train step: from the second on, read it from disk
    jax.config.update("jax_compilation_cache_dir", str(shared / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
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
    state, history, interrupted, final, restored = train_interrupted_and_resumed(
        spec_path, shared / "checkpoints"
    )
    if is_primary():  # as the train stage's output: one file on the shared filesystem
        save_model(shared / "model.eqx", (state.ema, state.initializer_ema))
    barrier("multihost_run: model saved")
    samples, written = run_sample_stage(spec_path, shared)
    np.savez(
        out_path, local=np.stack(local), whole=np.stack(whole), sums=np.stack(sums),
        means=np.asarray(means, np.float64), rows=np.asarray(rows),
        losses=np.asarray(losses, np.float64), **{f"param_{i}": p for i, p in enumerate(params)},
        resumed_losses=np.asarray([h["loss"] for h in history], np.float64),
        **{f"resumed_param_{i}": p for i, p in enumerate(network_arrays(state))},
        interrupted_steps=np.asarray(interrupted, int), final_steps=np.asarray(final, str),
        restored=np.asarray(restored, int), samples=samples, written=np.asarray(written, str),
    )  # fmt: skip
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5]))
