"""Several hosts: each feeds only its own rows of a batch, and together they make the one-host
batch; a real run of two JAX processes on this machine gives the numbers of one process, in
training, in training resumed from an Orbax checkpoint, and in the sample stage."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_toy_spec
from multihost_run import BATCH, INTERRUPT, STEPS, batch_stats, images, train

from drlx.builder import build
from drlx.data.pipeline import FLIP_STREAM, batch_iterator
from drlx.io import write_arrays
from drlx.samplers.many import sample
from drlx.sharding import (
    check_process_order,
    make_mesh,
    process_rows,
    shard_batch,
    shard_local_batch,
    to_host,
)
from drlx.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def numbered_images(n: int = 50) -> np.ndarray:
    """Images whose row 0 holds the example index at column 0 and its negative at column 2, so
    a mirrored image has a negative column 0."""
    x = np.zeros((n, 2, 3, 1), np.float32)
    x[:, 0, 0, 0], x[:, 0, 2, 0] = np.arange(n), -np.arange(n) - 1
    return x


def reference_batch(x: np.ndarray, batch_size: int, seed: int, i: int) -> np.ndarray:
    """Batch i as the pipeline defines it (one host): the sorted rows of this epoch's
    permutation, each image mirrored when its draw from [seed, i, FLIP_STREAM] is below 1/2."""
    epoch, j = divmod(i, len(x) // batch_size)
    perm = np.random.default_rng([seed, epoch]).permutation(len(x))
    batch = x[np.sort(perm[j * batch_size : (j + 1) * batch_size])]
    mirror = np.random.default_rng([seed, i, FLIP_STREAM]).random(batch_size) < 0.5
    batch[mirror] = batch[mirror, :, ::-1]
    return batch


def take(iterator, count: int) -> list[np.ndarray]:
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_host_slices_put_together_are_the_one_host_batch(processes: int):
    x, batch_size, seed, count = numbered_images(), 8, 7, 20  # 6 batches an epoch: 3+ epochs
    whole = take(batch_iterator(x, batch_size, seed, flip=True), count)
    rows = [process_rows(batch_size, p, processes) for p in range(processes)]
    slices = [take(batch_iterator(x, batch_size, seed, flip=True, rows=r), count) for r in rows]
    for i in range(count):
        expected = reference_batch(x, batch_size, seed, i)
        np.testing.assert_array_equal(whole[i], expected)  # one host: batches as before
        assert whole[i].dtype == np.float32 and whole[i].shape == (8, 2, 3, 1)
        parts = [s[i] for s in slices]
        assert all(len(part) == batch_size // processes for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), expected)
    mirrored = np.concatenate(whole)[:, 0, 0, 0] < 0
    assert 0.3 < mirrored.mean() < 0.7  # the flips are really exercised


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_each_host_slice_resumes_exactly(processes: int):
    x = numbered_images()
    for p in range(processes):
        rows = process_rows(8, p, processes)
        straight = take(batch_iterator(x, 8, seed=2, flip=True, rows=rows), 15)
        it = batch_iterator(x, 8, seed=2, flip=True, rows=rows)
        take(it, 9)  # past the end of the first epoch (6 batches)
        resumed = batch_iterator(x, 8, seed=2, flip=True, rows=rows)
        resumed.set_state(it.get_state())
        np.testing.assert_array_equal(take(resumed, 6), straight[9:])


def test_process_rows_split_evenly_in_process_order():
    assert process_rows(8, 0, 1) == (0, 8)
    assert [process_rows(12, p, 3) for p in range(3)] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match=r"batch size \(10\) must be a multiple of .* \(4\)"):
        process_rows(10, 0, 4)
    with pytest.raises(ValueError, match="process index 2 is not in 0..1"):
        process_rows(8, 2, 2)
    with pytest.raises(ValueError, match="non-empty range"):
        batch_iterator(numbered_images(), 8, seed=0, rows=(4, 9))


def test_mesh_devices_must_be_grouped_by_process():
    check_process_order([0, 0, 1, 1], 2)
    check_process_order([0, 1, 2, 3], 4)
    check_process_order([d.process_index for d in make_mesh("all").devices.flat], 1)
    for owners, count in (([0, 1, 0, 1], 2), ([1, 1, 0, 0], 2), ([0, 0, 0, 1], 2), ([0, 0], 2)):
        with pytest.raises(ValueError, match="grouped in process order"):
            check_process_order(owners, count)


def test_one_process_placement_is_shard_batch():
    mesh = make_mesh("all")
    local = images()[:8]
    placed, reference = shard_local_batch(local, mesh), shard_batch(local, mesh)
    assert placed.shape == reference.shape and placed.dtype == reference.dtype == np.float32
    assert placed.sharding == reference.sharding
    np.testing.assert_array_equal(to_host(placed), local)
    assert isinstance(to_host(placed), np.ndarray)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[list[dict], Path, Path]:
    """Run tests/multihost_run.py as processes 0 and 1 of one JAX job (2 CPU devices each);
    their shared folder (checkpoints, model, sample stage outputs) is `shared`."""
    tmp = tmp_path_factory.mktemp("multihost")
    spec = tiny_toy_spec(
        tmp / "mh.yaml", "mh", data={"num_train": 600, "num_heldout": 100},
        sampler={"num_steps": 8}, evaluate={"num_samples": 40, "num_draws": 2, "draw_size": 20},
        runtime={"devices": "all", "progress": False, "checkpoint_every": 4,
                 "sample_batch_size": 16},  # 3 chunks, the last one padded
        train={"num_steps": 10, "batch_size": 64, "log_every": 5, "warmup_steps": 5},
    )  # fmt: skip
    shared = tmp / "shared"
    write_arrays(shared / "data.npz", heldout=np.zeros((50, 2), np.float32))  # for the plot
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port, script = free_port(), str(ROOT / "tests/multihost_run.py")
    logs = [tmp / f"log{i}.txt" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with logs[i].open("w") as log:
                args = [str(port), str(i), str(spec), str(tmp / f"out{i}.npz"), str(shared)]
                cmd = [sys.executable, script, *args]
                procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log))
        # the test cannot hang: ~50 CPU-seconds in all, 60-120 s on this 2-core CPU when other
        # jobs load it (a load average of 10-14)
        deadline = time.monotonic() + 240
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log.read_text()[-3000:]
    return [dict(np.load(tmp / f"out{i}.npz")) for i in range(2)], spec, shared


@pytest.fixture(scope="module")
def one_process_training(two_processes) -> tuple[list[float], list[np.ndarray]]:
    """The logged losses and final network of the same `fit` in this process alone."""
    return train(str(two_processes[1]))


@pytest.mark.slow
def test_two_processes_feed_their_slices_and_agree_with_one(two_processes):
    outs = two_processes[0]
    whole = take(batch_iterator(images(), BATCH, seed=4, flip=True), STEPS)
    mesh = make_mesh(1)
    stats = batch_stats(mesh)
    for p, out in enumerate(outs):
        start, stop = process_rows(BATCH, p, 2)
        assert tuple(out["rows"]) == (start, stop) == (4 * p, 4 * p + 4)
        for i in range(STEPS):
            np.testing.assert_array_equal(out["local"][i], whole[i][start:stop])  # only its rows
            np.testing.assert_array_equal(out["whole"][i], whole[i])  # gathered: the batch
            sums, mean = stats(shard_batch(whole[i], mesh))
            np.testing.assert_allclose(out["sums"][i], np.asarray(sums), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(out["means"][i], float(mean), rtol=1e-6, atol=1e-6)
    assert not np.array_equal(outs[0]["local"], outs[1]["local"])


def assert_matches_one_process(out: dict, prefix: str, losses: list, params: list) -> None:
    """Only the order of floating-point reductions (batch means, gradient sums) may differ."""
    assert len([k for k in out if k.startswith(prefix + "param_")]) == len(params)
    np.testing.assert_allclose(out[prefix + "losses"], losses, rtol=1e-4, atol=1e-8)
    for i, ref in enumerate(params):
        scale = max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(out[f"{prefix}param_{i}"], ref, rtol=0, atol=1e-5 * scale)


@pytest.mark.slow
def test_two_process_training_matches_one_process(two_processes, one_process_training):
    outs = two_processes[0]
    losses, params = one_process_training  # this process alone, on its own devices
    assert len(losses) == 2
    for out in outs:
        assert_matches_one_process(out, "", losses, params)
    np.testing.assert_array_equal(outs[0]["losses"], outs[1]["losses"])


@pytest.mark.slow
def test_two_process_run_resumed_from_checkpoint_matches_one_uninterrupted(
    two_processes, one_process_training
):
    """Orbax on two processes: the run stopped at step 6 had saved step 4 (checkpoint_every)
    to the shared folder; a new `fit` restores step 4 on both and ends where one process does
    without interruption; old steps are dropped and nothing else is left in the folder."""
    outs, _, shared = two_processes
    losses, params = one_process_training
    (folder,) = (shared / "checkpoints").iterdir()  # the spec's training hash
    assert sorted(p.name for p in folder.iterdir()) == ["10", "8"]  # max_to_keep 2, no trash
    assert INTERRUPT == 6
    for out in outs:
        assert out["interrupted_steps"].tolist() == [4]  # step 6 was never saved
        assert out["restored"].tolist() == [4]
        assert sorted(out["final_steps"].tolist()) == ["10", "8"]
        assert_matches_one_process(out, "resumed_", losses, params)
        # resuming does not change a single bit of the two-process run
        for i in range(len(params)):
            np.testing.assert_array_equal(out[f"resumed_param_{i}"], out[f"param_{i}"])
        np.testing.assert_array_equal(out["resumed_losses"], out["losses"])


@pytest.mark.slow
def test_two_process_sample_stage_matches_one_process(two_processes):
    """Both processes get all the samples back, equal to one process's from the same weights;
    only process 0 writes the stage's outputs."""
    outs, spec, shared = two_processes
    exp = build(load_spec(spec))
    expected = sample(exp, exp.ebm(*exp.load_model(shared / "model.eqx")))  # this process alone
    assert expected.shape == (40, 2)
    samples = np.load(shared / "samples.npz")["samples"]
    for out in outs:
        np.testing.assert_array_equal(out["samples"], samples)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-5 * scale)
    assert outs[0]["written"].tolist() == [str(shared / "samples.npz"), str(shared / "samples.png")]
    assert outs[1]["written"].tolist() == []
    assert (shared / "samples.png").read_bytes().startswith(b"\x89PNG")
