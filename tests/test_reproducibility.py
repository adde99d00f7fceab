"""The pipeline as a user runs it, and the reproducibility gate (CI): a tiny experiment and its
CDRL twin (with the sweep of the two) in a fresh git repository; `drlx repro --jobs 2` (what
`make run` runs: DVC's stages two at a time) runs every stage, a second `dvc repro` runs none,
a third (tiny's stages, by `dvc repro`, one at a time) from nothing gives identical numbers;
`drlx audit --all` passes; tampered copies fail it, naming the file (and the key)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_COMPILE_FLAG, TINY_DENSITY, TINY_PARAMS
from typer.testing import CliRunner, Result

from drlx.audit import Auditor
from drlx.cli import app
from drlx.io import md5_file
from drlx.ledger import flatten_metrics
from drlx.report import build_report
from drlx.repro import make_plan

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "sample", "evaluate", "density")

TINY = (
    """\
extends: bases/toy2d.yaml
name: tiny
data: {name: two_moons, num_train: 1000, num_heldout: 200}
model: {width: 16, depth: 2}
sampler: {num_steps: 3}
train: {num_steps: 20, batch_size: 32, log_every: 10}
evaluate: {num_samples: 200, num_projections: 16, heatmap_resolution: 16, num_draws: 2,
  draw_size: 100}
runtime: {progress: false}
"""
    + TINY_DENSITY
)


def _run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(cwd),
        "DVC_NO_ANALYTICS": "1",
        # one persistent XLA cache for every stage process, outside the repository (which stays
        # clean): the run from nothing compiles nothing again (same programs, same numbers)
        "JAX_COMPILATION_CACHE_DIR": str(cwd.parent / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "XLA_FLAGS": FAST_COMPILE_FLAG,  # tests/helpers.py: compiling is most of these stages
        "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
    }  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def _ok(cmd: list, cwd: Path) -> str:
    done = _run(cmd, cwd)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _audit(repo: Path, monkeypatch) -> Result:
    """`drlx audit --all` in `repo` (in this process: no second start of JAX and DVC)."""
    monkeypatch.chdir(repo)
    return CliRunner().invoke(app, ["audit", "--all"])


def _problems(repo: Path) -> list[str]:
    return Auditor(repo).audit(str(repo / "runs/tiny/metrics.json")).problems


@pytest.mark.slow
def test_pipeline_reproduces_and_audit_catches_tampering(tmp_path: Path, monkeypatch):
    repo = tmp_path / "repo"
    for item in ("drlx", "stages"):  # not the other pipelines' locks: their outputs are not here
        ignore = shutil.ignore_patterns("__pycache__", "dvc.lock")
        shutil.copytree(ROOT / item, repo / item, ignore=ignore)
    for item in ("dvc.yaml", ".dvcignore", "requirements.lock", "specs/bases/toy2d.yaml"):
        (repo / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / item, repo / item)
    (repo / "specs/tiny.yaml").write_text(TINY)
    # its CDRL twin, and the sweep of the two at equal compute
    cdrl = "initializer: {kind: mlp, width: 16, depth: 2, learning_rate: 1e-3}\n"
    (repo / "specs/tiny_cdrl.yaml").write_text(TINY.replace("name: tiny", "name: tiny_cdrl") + cdrl)
    params = TINY_PARAMS.replace(
        "feature_experiments: {}",
        "  tiny_cdrl:\n    base: specs/bases/toy2d.yaml\nfeature_experiments: {}",
    ).replace(
        "\nsweeps: {}", "\nsweeps:\n  tiny:\n    cdrl: tiny_cdrl\n    base: specs/bases/toy2d.yaml"
    )
    (repo / "params.yaml").write_text(params)
    dvc = str(Path(sys.executable).parent / "dvc")
    _ok(["git", "init", "-q"], repo)
    _ok([dvc, "init", "-q"], repo)
    _ok(["git", "add", "-A"], repo)
    _ok(["git", "commit", "-qm", "code and specs"], repo)

    # Two runs from nothing (outputs, checkpoints and cache removed; -f: no run-cache shortcut).
    out = repo / "runs/tiny"
    first = _ok([Path(sys.executable).parent / "drlx", "repro", "--jobs", "2"], repo)
    assert first.startswith("11 stages to run, up to 2 at a time")
    assert all(f"done  {s}@{e} (" in first for s in STAGES for e in ("tiny", "tiny_cdrl"))
    assert first.rstrip().endswith("Data and pipelines are up to date.")
    logs = repo / ".dvc/tmp/repro"  # each stage's own output
    assert "Running stage 'train@tiny'" in (logs / "train@tiny.log").read_text()
    metrics = (out / "metrics.json").read_text()
    swd = json.loads(metrics)["sliced_wasserstein"]
    assert swd["model"]["mean"] > 0 and swd["floor"]["mean"] > 0
    assert json.loads(metrics)["num_draws"] == 2
    for png in ("samples.png", "density.png", "train_loss.png", "steps_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "done  steps_sweep@tiny (" in first
    sweep = json.loads((out / "steps_sweep.json").read_text())
    cells = {(r["method"], r["langevin_steps_per_level"]) for r in sweep["rows"]}
    # the sweep's K values and each method's own generation K (3, tiny's sampler)
    drl_k, cdrl_k = (3, 5, 7, 15, 30), (0, 3, 5, 7, 15, 30)
    assert cells == {("drl", k) for k in drl_k} | {("cdrl", k) for k in cdrl_k}
    passes = {(r["method"], r["langevin_steps_per_level"]): r["network_passes_per_sample"]
              for r in sweep["rows"]}  # fmt: skip
    assert passes["drl", 30] == 6 * 30 and passes["cdrl", 15] == 6 * 15 + 6
    assert all(r["swd_over_floor"]["low"] <= r["swd_over_floor"]["mean"] for r in sweep["rows"])
    # nothing changed: a second `dvc repro` runs nothing and leaves the numbers as they were
    assert "Running stage" not in _ok([dvc, "repro"], repo)
    assert (out / "metrics.json").read_text() == metrics
    model = md5_file(out / "model.eqx")
    records = {s: json.loads((out / f"ledger/{s}.json").read_text()) for s in STAGES}
    recorded = records["evaluate"]["metrics"]["runs/tiny/metrics.json"]
    assert recorded == flatten_metrics(json.loads(metrics))
    assert records["prepare"]["environment"]["git"]["dirty"] is False
    # tiny's own outputs and records go (tiny_cdrl's and the sweep's stay)
    shutil.rmtree(out / "checkpoints")
    for path in [*out.glob("*.*"), *(out / "ledger").iterdir()]:
        if not path.name.startswith("steps_sweep"):
            path.unlink()
    # what `drlx repro` would run now: tiny's stages, inputs first, and the sweep below them
    plan = make_plan(repo, ["dvc.yaml"])
    assert set(plan.stages) == {f"{s}@tiny" for s in STAGES} | {"steps_sweep@tiny"}
    assert plan.stages.index("prepare@tiny") < plan.stages.index("train@tiny")
    # its data and tiny's model (tiny_cdrl's model is up to date)
    assert plan.upstream["steps_sweep@tiny"] == {"prepare@tiny", "train@tiny"}
    shutil.rmtree(repo / ".dvc/cache")
    # tiny's five stages (-f with targets forces their upstream too); the sweep, which reads
    # tiny's model, stays valid only if that model comes back byte for byte (the audit below)
    second = _ok([dvc, "repro", "-f", "evaluate@tiny", "density@tiny"], repo)
    assert all(f"Running stage '{s}@tiny'" in second for s in STAGES)
    assert (out / "metrics.json").read_text() == metrics  # byte for byte
    assert md5_file(out / "model.eqx") == model
    for s in STAGES:  # same inputs and outputs recorded by both runs
        again = json.loads((out / f"ledger/{s}.json").read_text())
        for record in (again, records[s]):  # Orbax writes timestamps into its checkpoints
            record["outs"].pop("runs/tiny/checkpoints", None)
        assert (again["deps"], again["outs"]) == (records[s]["deps"], records[s]["outs"]), s

    passed = _audit(repo, monkeypatch)
    assert passed.exit_code == 0, passed.output
    # tiny: evaluate, density, steps_sweep; tiny_cdrl: evaluate, density
    assert "5 of 5 metrics files pass" in passed.stdout
    assert "stage prepare@tiny" in passed.stdout and "specs/bases/toy2d.yaml" in passed.stdout

    md, page = build_report(repo, "reports")
    text = page.read_text()
    pngs = sorted(p.name for p in (repo / "runs/tiny").glob("*.png"))
    assert len(pngs) == 6  # and 5 of tiny_cdrl (no sweep of its own)
    pngs += sorted(p.name for p in (repo / "runs/tiny_cdrl").glob("*.png"))
    assert len(pngs) == 11 and text.count("data:image/png;base64,") == len(pngs)
    assert "sliced_wasserstein" in text
    assert "| runs/tiny/metrics.json | mmd2.model.mean |" in md.read_text()
    assert "not run here" in md.read_text() and "| fail |" not in md.read_text()

    # Tamper with a copy: each change fails the audit and names what changed.
    bad = tmp_path / "tampered"
    shutil.copytree(repo, bad, symlinks=True)
    metrics_file = bad / "runs/tiny/metrics.json"
    values = json.loads(metrics)
    edited = json.loads(metrics)
    edited["mmd2"]["model"]["mean"] *= 0.5
    metrics_file.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    failed = _audit(bad, monkeypatch)
    assert failed.exit_code == 1
    assert "runs/tiny/metrics.json: key 'mmd2.model.mean'" in failed.stdout
    assert "key 'sliced_wasserstein'" not in failed.stdout
    metrics_file.write_text(metrics)
    assert _problems(bad) == []

    spec = bad / "specs/tiny.yaml"
    spec.write_text(TINY.replace("num_steps: 20", "num_steps: 21"))
    assert any(p.startswith("specs/tiny.yaml: train.num_steps was 20") for p in _problems(bad))
    spec.write_text(TINY)

    for name in ("data.npz", "model.eqx"):  # replaced by another valid file of the same kind
        target = bad / "runs/tiny" / name
        original = target.read_bytes()
        target.unlink()  # DVC may have linked it to its cache
        if name == "data.npz":
            np.savez(target, train=np.zeros((1000, 2), np.float32))
        else:
            target.write_bytes(original[:-4] + b"\0\0\0\0")
        assert any(p.startswith(f"runs/tiny/{name}: changed after the run") for p in _problems(bad))
        target.write_bytes(original)
    assert _problems(bad) == []

    # Covering the tracks: the edited metric re-committed to dvc.lock, or the record edited too.
    lock_text = (bad / "dvc.lock").read_text()
    old_md5 = md5_file(metrics_file)
    metrics_file.write_text(json.dumps({**values, "num_samples": values["num_samples"] + 1}))
    (bad / "dvc.lock").write_text(lock_text.replace(old_md5, md5_file(metrics_file)))
    assert any("dvc.lock changed without re-running" in p for p in _problems(bad))
    (bad / "dvc.lock").write_text(lock_text)
    record_file = bad / "runs/tiny/ledger/evaluate.json"
    record = json.loads(record_file.read_text())
    record["metrics"]["runs/tiny/metrics.json"] = json.loads(metrics_file.read_text())
    record_file.write_text(json.dumps(record))
    edited = "runs/tiny/ledger/evaluate.json: ledger record edited"
    assert any(p.startswith(edited) for p in _problems(bad))
