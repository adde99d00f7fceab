"""Checkpoints: exact resumption after a real kill, corrupt checkpoints, divergence."""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import INITIALIZER, fast_compile_env, tiny_toy_spec

from drlx.builder import build
from drlx.spec import load_spec
from drlx.train.checkpoint import COMPLETE_MARKERS, TRASH, Checkpointer
from drlx.train.loop import NonFiniteLossError, train_loop
from drlx.train.step import init_state

ROOT = Path(__file__).resolve().parents[1]


def _write_spec(tmp: Path, steps: int, cooperative: bool = False) -> Path:
    extra = {"initializer": INITIALIZER} if cooperative else {}
    return tiny_toy_spec(
        tmp / "ckpt.yaml", "ckpt", sampler={"num_steps": 5},
        train={"num_steps": steps, "batch_size": 64, "log_every": 10},
        runtime={"checkpoint_every": 20}, **extra,
    )  # fmt: skip


def _train_cmd(spec: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "stages/train.py"), "--spec", str(spec), "--data", str(data),
        "--model", str(out / "model.eqx"), "--history", str(out / "history.json"),
        "--plot", str(out / "loss.png"), "--checkpoints", str(out / "checkpoints"),
    ]  # fmt: skip


def _complete(step_dir: Path) -> bool:
    """Orbax wrote the step whole: its completion files are there (written before the rename)."""
    return all((step_dir / marker).is_file() for marker in COMPLETE_MARKERS)


def _steps_saved(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.glob("*/*") if p.name.isdigit() and _complete(p))


@pytest.mark.slow
@pytest.mark.parametrize("cooperative", [False, True], ids=["drl", "cdrl"])
def test_killed_run_resumes_to_bitwise_identical_parameters(tmp_path: Path, cooperative: bool):
    spec = _write_spec(tmp_path, steps=400, cooperative=cooperative)
    data = tmp_path / "data.npz"
    prepare = [sys.executable, str(ROOT / "stages/prepare.py"), "--spec", str(spec)]
    env = fast_compile_env(cache=tmp_path / "jax_cache")  # the three runs compile once
    subprocess.run([*prepare, "--out", str(data)], check=True, cwd=ROOT, env=env)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    fresh = subprocess.run(
        _train_cmd(spec, data, straight), cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resumed from step" not in fresh.stderr  # a fresh start says nothing of the kind

    proc = subprocess.Popen(_train_cmd(spec, data, killed), cwd=ROOT, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not [
        s for s in _steps_saved(killed / "checkpoints") if s >= 60
    ]:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, mid-run, no clean-up
    proc.wait()
    saved = _steps_saved(killed / "checkpoints")
    assert saved and max(saved) < 400, f"the kill came too late to test resumption: {saved}"
    assert not (killed / "model.eqx").exists()

    resumed = subprocess.run(
        _train_cmd(spec, data, killed), cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the run says where it resumed, once, and it is the newest checkpoint the kill left whole
    restored = [int(n) for n in re.findall(r"^resumed from step (\d+)$", resumed.stderr, re.M)]
    assert restored == [max(saved)] and max(saved) >= 60, (restored, saved, resumed.stderr)
    # no warning names the checkpoints: neither Orbax (leftovers of the kill) nor ours (unusable)
    assert str(killed / "checkpoints") not in resumed.stderr, resumed.stderr[-3000:]
    assert (killed / "model.eqx").read_bytes() == (straight / "model.eqx").read_bytes()
    assert (killed / "history.json").read_text() == (straight / "history.json").read_text()


@pytest.fixture
def small(tmp_path: Path):
    exp = build(load_spec(_write_spec(tmp_path, steps=40)))
    return exp, init_state(exp.init_network(), exp.optimizer)


def _bump(state, value):
    params, static = eqx.partition(state, eqx.is_inexact_array)
    params = jax.tree.map(lambda a: a + value, params)
    return eqx.combine(params, static)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path: Path, small):
    exp, state = small
    key = exp.key("train")
    ckpt = Checkpointer(tmp_path / "ck", exp.training_hash)
    first = eqx.tree_at(lambda s: s.step, state, jnp.asarray(10, jnp.int32))
    second = eqx.tree_at(lambda s: s.step, _bump(state, 1.0), jnp.asarray(20, jnp.int32))
    ckpt.save(first, {"next_index": 10}, [{"step": 10}], key)
    ckpt.save(second, {"next_index": 20}, [{"step": 20}], key)

    got = ckpt.restore(state, key)
    assert int(got.state.step) == 20 and got.data_state == {"next_index": 20}

    # flip bytes in the newest checkpoint's array data
    files = [p for p in (ckpt.directory / "20" / "arrays").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    biggest.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="unusable"):
        got = Checkpointer(tmp_path / "ck", exp.training_hash).restore(state, key)
    assert int(got.state.step) == 10 and got.history == [{"step": 10}]
    leaves = jax.tree.leaves(eqx.filter(got.state, eqx.is_inexact_array))
    for a, b in zip(leaves, jax.tree.leaves(eqx.filter(first, eqx.is_inexact_array)), strict=True):
        np.testing.assert_array_equal(a, b)

    # truncate the remaining one too: nothing usable is left
    for p in (ckpt.directory / "10" / "arrays").rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    with pytest.warns(UserWarning):
        assert Checkpointer(tmp_path / "ck", exp.training_hash).restore(state, key) is None


def _save_at(ckpt: Checkpointer, state, step: int, key, bump: float = 0.0) -> None:
    at = eqx.tree_at(lambda s: s.step, _bump(state, bump), jnp.asarray(step, jnp.int32))
    ckpt.save(at, {"next_index": step}, [{"step": step}], key)


@pytest.fixture
def orbax_warnings(caplog):
    """Orbax's warnings (absl logging, which propagates to Python's root logger)."""
    caplog.set_level(logging.WARNING, logger="absl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "absl"]


def test_leftovers_of_a_kill_are_removed_and_restore_takes_the_newest_whole_step(
    tmp_path: Path, small, orbax_warnings, recwarn
):
    """A kill mid-save leaves `<step>.orbax-checkpoint-tmp`; a kill while Orbax deleted an old
    step (before drops went through TRASH) left a step folder without its files. Neither is
    listed, warned about or restored; the tmp folder no longer trips the re-save of its step."""
    exp, state = small
    key = exp.key("train")
    ckpt = Checkpointer(tmp_path / "ck", exp.training_hash, max_to_keep=3)
    for step in (10, 20, 30):
        _save_at(ckpt, state, step, key, bump=step)
    folder = ckpt.directory
    shutil.copytree(folder / "30", folder / "40.orbax-checkpoint-tmp")  # mid-save
    (folder / "40.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
    for path in (folder / "10").rglob("*"):  # mid-delete: files gone, folders left
        if path.is_file():
            path.unlink()
    for marker in COMPLETE_MARKERS:  # and a newest step cut short the same way
        (folder / "30" / marker).unlink()
    assert orbax_warnings() == []

    again = Checkpointer(tmp_path / "ck", exp.training_hash, max_to_keep=3)
    assert again.manager.all_steps() == [20]
    assert not (folder / "10").exists() and not (folder / "30").exists()
    got = again.restore(state, key)
    assert int(got.state.step) == 20 and got.history == [{"step": 20}]
    _save_at(again, state, 40, key)  # the step whose save the kill cut short
    assert not (folder / "40.orbax-checkpoint-tmp").exists()
    assert again.manager.all_steps() == [20, 40]
    assert orbax_warnings() == []
    assert not [w for w in recwarn if "unusable" in str(w.message)]


def test_old_steps_are_dropped_by_an_atomic_rename(tmp_path: Path, small, monkeypatch):
    """Orbax drops a step (max_to_keep) by renaming it whole into TRASH, emptied after the
    save: a kill at any moment leaves every step folder whole or absent."""
    exp, state = small
    key = exp.key("train")
    ckpt = Checkpointer(tmp_path / "ck", exp.training_hash, max_to_keep=2)
    monkeypatch.setattr(ckpt, "_empty_trash", lambda: None)  # as if killed before emptying
    for step in (10, 20, 30):
        _save_at(ckpt, state, step, key)
    trash = ckpt.directory / TRASH
    assert _steps_saved(tmp_path / "ck") == [20, 30]
    assert [p.name for p in trash.iterdir()] == ["10"] and _complete(trash / "10")
    assert Checkpointer(tmp_path / "ck", exp.training_hash).manager.all_steps() == [20, 30]
    assert not trash.exists()  # emptied when the folder is opened


def test_a_resumed_run_replaces_the_unusable_checkpoint_it_skipped(tmp_path: Path, small):
    """Resumed from step 10 past an unusable step 20, the run saves step 20 again (Orbax alone
    raises StepAlreadyExistsError) and the new one is what a later resume gets."""
    exp, state = small
    key = exp.key("train")
    ckpt = Checkpointer(tmp_path / "ck", exp.training_hash)
    _save_at(ckpt, state, 10, key)
    _save_at(ckpt, state, 20, key, bump=1.0)
    (ckpt.directory / "20" / "meta" / "metadata").write_text("{truncated")
    again = Checkpointer(tmp_path / "ck", exp.training_hash)
    with pytest.warns(UserWarning, match="unusable"):
        assert int(again.restore(state, key).state.step) == 10
    _save_at(again, state, 20, key, bump=2.0)
    got = Checkpointer(tmp_path / "ck", exp.training_hash).restore(state, key)
    assert int(got.state.step) == 20
    expected = jax.tree.leaves(eqx.filter(_bump(state, 2.0), eqx.is_inexact_array))
    for a, b in zip(
        jax.tree.leaves(eqx.filter(got.state, eqx.is_inexact_array)), expected, strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_another_spec_never_resumes_a_stale_run(tmp_path: Path, small):
    exp, state = small
    Checkpointer(tmp_path / "ck", "a" * 64).save(state, {}, [], exp.key("train"))
    assert Checkpointer(tmp_path / "ck", "b" * 64).restore(state, exp.key("train")) is None


def test_nan_stops_training_and_keeps_last_good_checkpoint(small):
    exp, state = small
    saved = []

    def fake_step(state, batch, key):
        step = state.step + 1
        loss = jnp.where(step >= 35, jnp.nan, 1.0)
        return eqx.tree_at(lambda s: s.step, state, step), {"loss": loss, "grad_norm": loss}

    with pytest.raises(NonFiniteLossError, match="step 35"):
        train_loop(
            state, fake_step, iter(lambda: None, 1), exp.key("train"), num_steps=100,
            log_every=5, progress=False, checkpoint=lambda s, h: saved.append(int(s.step)),
            checkpoint_every=10,
        )  # fmt: skip
    assert saved == [10, 20, 30]


def test_diverged_chains_stop_training_with_a_finite_loss(small):
    """Chains that run off the data stop training (and checkpointing) even while the loss is
    still finite; the message names the step and the size of the chains."""
    exp, state = small
    saved = []

    def fake_step(state, batch, key):
        step = state.step + 1
        chain = jnp.where(step >= 25, 1e6, 3.0)
        metrics = {"loss": jnp.float32(-1.0), "grad_norm": jnp.float32(0.1), "chain_max_abs": chain}
        return eqx.tree_at(lambda s: s.step, state, step), metrics

    with pytest.raises(NonFiniteLossError, match=r"chains diverged at step 25: .* 1e\+06"):
        train_loop(
            state, fake_step, iter(lambda: None, 1), exp.key("train"), num_steps=100,
            log_every=5, progress=False, checkpoint=lambda s, h: saved.append(int(s.step)),
            checkpoint_every=10,
        )  # fmt: skip
    assert saved == [10, 20]
