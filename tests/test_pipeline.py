"""The pipeline, run as a user runs it: `dvc repro` in a fresh repository, twice."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_DENSITY, TINY_PARAMS

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
extends: bases/toy2d.yaml
name: tiny
data: {name: two_moons, num_train: 2000, num_heldout: 300}
model: {width: 32, depth: 2}
sampler: {num_steps: 5}
train: {num_steps: 30, batch_size: 64, log_every: 10}
evaluate: {num_samples: 300, num_projections: 32, heatmap_resolution: 24, num_draws: 3,
  draw_size: 100}
runtime: {progress: false}
""" + TINY_DENSITY


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": env_path, "HOME": str(cwd), "DVC_NO_ANALYTICS": "1"},
    )


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_does_nothing(tmp_path: Path):
    for item in ("drlx", "stages"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "specs" / "bases").mkdir(parents=True)
    shutil.copy(ROOT / "specs/bases/toy2d.yaml", tmp_path / "specs/bases/toy2d.yaml")
    (tmp_path / "specs/tiny.yaml").write_text(TINY)
    # its CDRL twin, and the sweep of the two at equal compute
    cdrl = "initializer: {kind: mlp, width: 16, depth: 2, learning_rate: 1e-3}\n"
    twin = TINY.replace("name: tiny", "name: tiny_cdrl") + cdrl
    (tmp_path / "specs/tiny_cdrl.yaml").write_text(twin)
    params = TINY_PARAMS.replace(
        "feature_experiments: {}",
        "  tiny_cdrl:\n    base: specs/bases/toy2d.yaml\nfeature_experiments: {}",
    ).replace(
        "\nsweeps: {}", "\nsweeps:\n  tiny:\n    cdrl: tiny_cdrl\n    base: specs/bases/toy2d.yaml"
    )
    (tmp_path / "params.yaml").write_text(params)
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        assert _run(cmd, tmp_path).returncode == 0

    first = _run([dvc, "repro"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "runs" / "tiny"
    for stage in ("prepare", "train", "sample", "evaluate", "density"):
        assert f"Running stage '{stage}@tiny'" in first.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    swd = metrics["sliced_wasserstein"]
    assert swd["model"]["mean"] > 0 and swd["floor"]["mean"] > 0 and metrics["num_draws"] == 3
    for png in ("samples.png", "density.png", "train_loss.png", "steps_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Running stage 'steps_sweep@tiny'" in first.stdout
    sweep = json.loads((out / "steps_sweep.json").read_text())
    cells = {(r["method"], r["langevin_steps_per_level"]) for r in sweep["rows"]}
    drl = {("drl", k) for k in (5, 7, 15, 30)}
    assert cells == drl | {("cdrl", k) for k in (0, 5, 7, 15, 30)}
    passes = {(r["method"], r["langevin_steps_per_level"]): r["network_passes_per_sample"]
              for r in sweep["rows"]}  # fmt: skip
    assert passes["drl", 30] == 6 * 30 and passes["cdrl", 15] == 6 * 15 + 6
    assert all(r["swd_over_floor"]["low"] <= r["swd_over_floor"]["mean"] for r in sweep["rows"])

    second = _run([dvc, "repro"], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert json.loads((out / "metrics.json").read_text()) == metrics
