"""A stage given an invalid spec fails loudly, names file:line, and writes nothing; every known
failure (drlx.errors.DrlxError) ends a stage with `error: <message>` and exit 2, no traceback,
while a bug keeps its traceback."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_SPEC, line_of, replace_once, tiny_toy_spec, write

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
    assert result.returncode == 2
    assert f"error: {spec}:{line_of(text, needle)}: {field}:" in result.stderr, result.stderr
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


# ---- known failures print `error: <message>` and exit 2; anything else keeps its traceback ----
def run_stage_script(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), f"stages/{script}", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, `error: <message>` on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"error: {message}" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """FULL_SPEC and the prepare stage's output for it."""
    folder = tmp_path_factory.mktemp("prepared")
    spec = write(folder, "good.yaml", FULL_SPEC)
    data = folder / "data.npz"
    result = run_prepare(spec, data)
    assert result.returncode == 0, result.stderr
    return spec, data


def train_args(spec: Path, data: Path, out: Path, checkpoints: Path | None = None) -> list:
    return [
        "--spec", spec, "--data", data, "--model", out / "model.eqx",
        "--history", out / "history.json", "--plot", out / "loss.png",
        "--checkpoints", checkpoints or out / "checkpoints",
    ]  # fmt: skip


def test_invalid_spec_is_a_clean_failure(tmp_path):
    spec = write(tmp_path, "bad.yaml", replace_once(FULL_SPEC, "num_steps: 30", "num_steps: -3"))
    result = run_stage_script("sample.py", "--spec", spec, "--model", tmp_path / "m.eqx",
                              "--data", tmp_path / "d.npz", "--out", tmp_path / "s.npz",
                              "--plot", tmp_path / "s.png")  # fmt: skip
    assert_clean_failure(result, f"{spec}:{line_of(FULL_SPEC, 'num_steps: 30')}: sampler.num_steps")


def test_missing_dataset_is_a_clean_failure(tmp_path):
    archive = tmp_path / "nowhere" / "cifar-10-binary.tar.gz"
    text = (
        f"extends: {REPO / 'specs/bases/drl_image.yaml'}\nname: c\n"
        f"data:\n  kind: cifar10\n  path: {archive}\n"
    )
    spec = write(tmp_path, "c.yaml", text)
    out = tmp_path / "out" / "data.npz"
    result = run_prepare(spec, out)
    assert_clean_failure(result, f"CIFAR-10 not found at {archive}: put cifar-10-binary.tar.gz")
    assert not out.parent.exists()


def test_missing_stage_input_is_a_clean_failure(tmp_path, prepared):
    spec, _ = prepared
    missing = tmp_path / "data.npz"
    result = run_stage_script("train.py", *train_args(spec, missing, tmp_path / "out"))
    assert_clean_failure(result, f"{missing}: expected an .npz file here (run the stage before")
    assert not (tmp_path / "out").exists()


def test_truncated_stage_input_is_a_clean_failure(tmp_path, prepared):
    spec, data = prepared
    truncated = tmp_path / "data.npz"
    truncated.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = run_stage_script("train.py", *train_args(spec, truncated, tmp_path / "out"))
    assert_clean_failure(result, f"{truncated}: cannot be read as an .npz file (")
    assert not (tmp_path / "out").exists()


def test_corrupt_model_file_is_a_clean_failure(tmp_path, prepared):
    spec, data = prepared
    model = tmp_path / "model.eqx"
    model.write_bytes(b"not a model" * 10)
    out = tmp_path / "out"
    result = run_stage_script("sample.py", "--spec", spec, "--data", data, "--model", model,
                              "--out", out / "s.npz", "--plot", out / "s.png")  # fmt: skip
    assert_clean_failure(result, f"{model}: cannot be read as this spec's model (")
    assert not out.exists()


def test_unusable_checkpoint_folder_is_a_clean_failure(tmp_path, prepared):
    spec, data = prepared
    a_file = tmp_path / "checkpoints"
    a_file.write_text("")
    result = run_stage_script("train.py", *train_args(spec, data, tmp_path / "out", a_file))
    assert_clean_failure(result, f"{a_file}/")
    assert "cannot hold checkpoints (NotADirectoryError" in result.stderr
    assert not (tmp_path / "out").exists()


def test_divergence_is_a_clean_failure_and_writes_no_model(tmp_path):
    train = {"num_steps": 20, "batch_size": 64, "log_every": 10}
    # a ULA step this large is refused when the spec is built, before anything runs
    ula = tiny_toy_spec(
        tmp_path / "u.yaml", "u", sampler={"num_steps": 5, "step_size_b2": 100.0}, train=train
    )
    refused = run_prepare(ula, tmp_path / "u.npz")
    assert_clean_failure(refused, f"{ula}:")
    assert "sampler.step_size_b2: level " in refused.stderr and "refused from" in refused.stderr
    # the check covers ULA only: underdamped chains with that step really diverge
    sampler = {"kind": "underdamped", "num_steps": 5, "step_size_b2": 100.0}
    spec = tiny_toy_spec(tmp_path / "d.yaml", "d", sampler=sampler, train=train)
    data = tmp_path / "data.npz"
    assert run_prepare(spec, data).returncode == 0
    out = tmp_path / "out"
    result = run_stage_script("train.py", *train_args(spec, data, out))
    assert_clean_failure(result, "the Langevin chains diverged at step 10: ")
    assert "Lower train.learning_rate or sampler.step_size_b2" in result.stderr
    assert "set train.dequantize to the grid's step" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # no model, no history


# The same harness on a stand-in stage: a known failure is clean, a bug keeps its traceback.
PROBE = """\
import sys
sys.path.insert(0, "stages")
from common import run_stage
from drlx.errors import InputError

def main():
    if sys.argv[1] == "known":
        raise InputError("in.npz: a known failure")
    {}["a bug"]

run_stage(main)
"""


@pytest.mark.parametrize("kind", ["known", "bug"])
def test_only_known_failures_lose_their_traceback(kind):
    result = subprocess.run(
        [str(PYTHON), "-c", PROBE, kind], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    if kind == "known":
        assert_clean_failure(result, "in.npz: a known failure")
    else:
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr
        assert "error:" not in result.stderr


def test_run_stage_fails_the_ledger_run_and_lets_bugs_through(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "stages"))
    import common

    from drlx.errors import InputError, MissingArraysError

    class Run:
        failed = False

        def fail(self):
            self.failed = True

    run = Run()
    monkeypatch.setattr(common, "_run", run)

    def known():
        raise MissingArraysError("x.npz: missing arrays ['a']\nsecond line")

    with pytest.raises(SystemExit) as exit_info:
        common.run_stage(known)
    assert exit_info.value.code == 2 and run.failed
    assert capsys.readouterr().err == "error: x.npz: missing arrays ['a']\nerror: second line\n"

    def bug():
        raise RuntimeError("a bug")

    run.failed = False
    with pytest.raises(RuntimeError, match="a bug"):  # propagates, to the exception hook
        common.run_stage(bug)
    assert not run.failed  # the hook (armed with the ledger run) fails it, not run_stage
    assert capsys.readouterr().err == ""

    checked = common.input_checks(ValueError)
    with pytest.raises(InputError, match="weights.bin: unreadable") as err_info, checked:
        raise ValueError("weights.bin: unreadable")
    assert isinstance(err_info.value, ValueError)
    with pytest.raises(TypeError), common.input_checks(ValueError):  # not listed: a bug
        raise TypeError("a bug")


def test_every_stage_runs_through_run_stage():
    """Every stage script's `if __name__ == "__main__":` block is `run_stage(main)`."""
    scripts = sorted(p for p in (REPO / "stages").glob("*.py") if p.name != "common.py")
    assert len(scripts) >= 10
    for script in scripts:
        tree = ast.parse(script.read_text())
        guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n)]
        assert [ast.unparse(n.body[0]) for n in guards] == ["run_stage(main)"], script.name


def test_cli_prints_known_failures_without_traceback(capsys):
    from drlx.cli import _App
    from drlx.errors import InputError

    app = _App()

    @app.command()
    def boom(bug: bool = False) -> None:
        raise RuntimeError("a bug") if bug else InputError("spec.yaml: a known failure")

    with pytest.raises(SystemExit) as exit_info:
        app([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: spec.yaml: a known failure\n"
    with pytest.raises(RuntimeError, match="a bug"):
        app(["--bug"])
