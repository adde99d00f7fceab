"""Several hosts: each feeds only its own rows of a batch, and together they make the one-host
batch; a real run of two JAX processes on this machine gives the numbers of one process."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_toy_spec
from multihost_run import BATCH, STEPS, batch_stats, images, train

from drlx.data.pipeline import FLIP_STREAM, batch_iterator
from drlx.sharding import (
    check_process_order,
    make_mesh,
    process_rows,
    shard_batch,
    shard_local_batch,
    to_host,
)

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
def two_processes(tmp_path_factory) -> tuple[list[dict], Path]:
    """Run tests/multihost_run.py as processes 0 and 1 of one JAX job (2 CPU devices each)."""
    tmp = tmp_path_factory.mktemp("multihost")
    spec = tiny_toy_spec(
        tmp / "mh.yaml", "mh", data={"num_train": 600, "num_heldout": 100},
        sampler={"num_steps": 8}, runtime={"devices": "all", "progress": False},
        train={"num_steps": 10, "batch_size": 64, "log_every": 5, "warmup_steps": 5},
    )  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port, script = free_port(), str(ROOT / "tests/multihost_run.py")
    logs = [tmp / f"log{i}.txt" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with logs[i].open("w") as log:
                args = [str(port), str(i), str(spec), str(tmp / f"out{i}.npz")]
                cmd = [sys.executable, script, *args]
                procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log))
        deadline = time.monotonic() + 150  # the test cannot hang (~20 s on this 2-core CPU)
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log.read_text()[-3000:]
    return [dict(np.load(tmp / f"out{i}.npz")) for i in range(2)], spec


@pytest.mark.slow
def test_two_processes_feed_their_slices_and_agree_with_one(two_processes):
    outs, _ = two_processes
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


@pytest.mark.slow
def test_two_process_training_matches_one_process(two_processes):
    outs, spec = two_processes
    losses, params = train(str(spec))  # this process alone, on its own devices
    assert len(losses) == 2
    for out in outs:
        assert len([k for k in out if k.startswith("param_")]) == len(params)
        # Only the order of floating-point reductions (batch means, gradient sums) may differ.
        np.testing.assert_allclose(out["losses"], losses, rtol=1e-4, atol=1e-8)
        for i, ref in enumerate(params):
            scale = max(1.0, float(np.max(np.abs(ref))))
            np.testing.assert_allclose(out[f"param_{i}"], ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_array_equal(outs[0]["losses"], outs[1]["losses"])
