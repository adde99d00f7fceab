"""A stage given an invalid spec fails loudly, names file:line, and writes nothing."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_SPEC, line_of, replace_once, write

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.exists():  # e.g. a CI image without the project venv
    PYTHON = Path(sys.executable)


def run_prepare(spec: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), "stages/prepare.py", "--spec", str(spec), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


BAD = {
    "negative_step": (
        "step_size_b2: 4e-3",
        "step_size_b2: -1e-3",
        "step_size_b2",
        "sampler.step_size_b2",
    ),
    "typo_key": ("  num_steps: 30\n", "  num_step: 30\n", "num_step:", "sampler.num_step"),
}


@pytest.mark.parametrize("case", BAD)
def test_prepare_rejects_bad_spec_and_writes_nothing(tmp_path, case):
    old, new, needle, field = BAD[case]
    text = replace_once(FULL_SPEC, old, new)
    spec = write(tmp_path, "bad.yaml", text)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.npz"
    result = run_prepare(spec, out)
    assert result.returncode != 0
    assert f"{spec}:{line_of(text, needle)}: {field}:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr  # a clean message, not a crash
    assert not out.exists()
    assert list(out_dir.iterdir()) == []  # no temporary file left behind either


def test_prepare_missing_spec(tmp_path):
    out = tmp_path / "x.npz"
    result = run_prepare(tmp_path / "missing.yaml", out)
    assert result.returncode != 0
    assert f"{tmp_path / 'missing.yaml'}:1:" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_prepare_good_spec_writes_only_the_output(tmp_path):
    """Positive control: the same harness does see a file when the stage succeeds."""
    spec = write(tmp_path, "good.yaml", FULL_SPEC)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.npz"
    result = run_prepare(spec, out)
    assert result.returncode == 0, result.stderr
    assert list(out_dir.iterdir()) == [out]
    with np.load(out, allow_pickle=False) as data:
        # FULL_SPEC: num_train 1000, num_heldout 100, 2D points.
        assert data["train"].shape == (1000, 2)
        assert data["heldout"].shape == (100, 2) and data["heldout_b"].shape == (100, 2)
