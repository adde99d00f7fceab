"""`drlx audit` covers every pipeline of a repository: the root dvc.yaml, one in a subfolder
whose stages run at the root (`wdir: ../..`, as stages/paper/dvc.yaml), and one a user adds
whose paths are relative to its own folder; each with its own dvc.lock. Lock paths are rebased
to the root, stages outside the root dvc.yaml are named by DVC's address, lineage crosses
pipelines, and a change is named wherever it is. Minimal stages (a script writing a number and
its ledger record) keep it fast."""

import contextlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import FULL_SPEC
from typer.testing import CliRunner

from drlx.audit import Auditor, find_root
from drlx.cli import app
from drlx.ledger import dvc_lock, git_info
from drlx.report import build_report

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

STAGE = '''\
"""A minimal stage: writes FID-like numbers (plus an input's fid) and its ledger record."""
import argparse
import json
import sys
from pathlib import Path

from drlx.ledger import StageRun

p = argparse.ArgumentParser()
p.add_argument("--spec", required=True)
p.add_argument("--input", help="input: numbers of another stage")
p.add_argument("--out", required=True, help="output: numbers")
p.add_argument("--value", type=float, default=1.0)
args = p.parse_args()
run = StageRun(sys.argv[0], p._actions, args, sys.argv)
value = args.value + (json.loads(Path(args.input).read_text())["fid"] if args.input else 0.0)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({"fid": value, "inception_score": 2.0, "kid": 0.01}))
run.finish()
'''
ROOT_PIPELINE = """\
stages:
  make:
    cmd: python stage.py --spec spec.yaml --out runs/root/m.json --value 1
    deps: [stage.py]
    params:
      - spec.yaml:
    outs: [{runs/root/ledger/make.json: {cache: false}}]
    metrics: [{runs/root/m.json: {cache: false}}]
"""
# as stages/paper/dvc.yaml: in a subfolder, run at the root; `make` is also a root stage's name
EXTRA_PIPELINE = """\
stages:
  make:
    wdir: ../..
    cmd: python stage.py --spec spec.yaml --out runs/extra/data.json --value 2
    deps: [stage.py]
    params:
      - spec.yaml:
    outs: [runs/extra/data.json, {runs/extra/ledger/make.json: {cache: false}}]
  score:
    wdir: ../..
    cmd: >-
      python stage.py --spec spec.yaml --input runs/extra/data.json
      --out runs/cifar10_t6/fid.json
    deps: [stage.py, runs/extra/data.json]
    params:
      - spec.yaml:
    outs: [{runs/cifar10_t6/ledger/score.json: {cache: false}}]
    metrics: [{runs/cifar10_t6/fid.json: {cache: false}}]
"""
# a user's pipeline: paths relative to its folder (no wdir: its commands run there), reading
# another pipeline's output
USER_PIPELINE = """\
stages:
  s:
    cmd: >-
      python ../stage.py --spec spec.yaml --input ../runs/extra/data.json
      --out out/m.json --value 10
    deps: [../stage.py, ../runs/extra/data.json]
    params:
      - spec.yaml:
    outs: [{out/ledger/s.json: {cache: false}}]
    metrics: [{out/m.json: {cache: false}}]
"""
LATER_PIPELINE = """\
stages:
  never:
    cmd: python ../stage.py --spec ../spec.yaml --out m.json
    metrics: [{m.json: {cache: false}}]
"""
PIPELINES = ("dvc.yaml", "stages/extra/dvc.yaml", "user/dvc.yaml")


def _run(cmd: list, cwd: Path) -> str:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(cwd),
        "PYTHONPATH": str(ROOT),
        "DVC_NO_ANALYTICS": "1",
        "COLUMNS": "250",  # the lineage tree unwrapped
        "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
    }  # fmt: skip
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipelines")
    files = {
        "stage.py": STAGE,
        "spec.yaml": FULL_SPEC,
        # 1e-5: dvc.lock (YAML 1.2) says 1e-05, which YAML 1.1 readers take for a string
        "user/spec.yaml": FULL_SPEC.replace("name: test_spec", "name: user_spec").replace(
            "learning_rate: 1e-3", "learning_rate: 1e-5"
        ),
        "dvc.yaml": ROOT_PIPELINE,
        "stages/extra/dvc.yaml": EXTRA_PIPELINE,
        "user/dvc.yaml": USER_PIPELINE,
    }
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    shutil.copy(ROOT / "requirements.lock", repo / "requirements.lock")
    _run(["git", "init", "-q"], repo)
    _run([BIN / "dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "pipelines"], repo)
    out = _run([BIN / "dvc", "repro", *PIPELINES], repo)
    for stage in ("make", "stages/extra/dvc.yaml:make", "stages/extra/dvc.yaml:score"):
        assert f"Running stage '{stage}'" in out, out
    assert "Running stage 'user/dvc.yaml:s'" in out
    # started inside stages/extra, DVC names its stage `make`, like the root's (whose record
    # must stay as it was): the record goes to the stage that really ran
    root_record = (repo / "runs/root/ledger/make.json").read_bytes()
    out = _run([BIN / "dvc", "repro", "-f", "-s", "make"], repo / "stages/extra")
    assert "Running stage 'make'" in out, out
    record = json.loads((repo / "runs/extra/ledger/make.json").read_text())
    assert list(record["outs"]) == ["runs/extra/data.json"] and record["stage"] == "make"
    assert record["environment"]["git"]["dirty"] is False  # its outputs are the pipeline's
    assert (repo / "runs/root/ledger/make.json").read_bytes() == root_record
    return repo


def _audit(cwd: Path, monkeypatch, *args: str):
    monkeypatch.chdir(cwd)
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, ["audit", *args])


@contextlib.contextmanager
def edited(path: Path, text: str):
    original = path.read_bytes()
    path.unlink()  # DVC may have linked it to its cache
    path.write_text(text)
    try:
        yield
    finally:
        path.unlink()
        path.write_bytes(original)


@pytest.mark.slow
def test_every_dvc_lock_is_read_and_rebased_to_the_root(repo):
    auditor = Auditor(repo)
    assert sorted(auditor.locks) == ["dvc.lock", "stages/extra/dvc.lock", "user/dvc.lock"]
    assert auditor.producer["runs/root/m.json"] == "make"  # root stages keep their names
    assert auditor.producer["runs/extra/data.json"] == "stages/extra/dvc.yaml:make"
    assert auditor.producer["runs/cifar10_t6/fid.json"] == "stages/extra/dvc.yaml:score"
    assert auditor.producer["user/out/m.json"] == "user/dvc.yaml:s"
    user = auditor.lock["user/dvc.yaml:s"]  # its lock says out/m.json, ../stage.py, spec.yaml
    assert {d["path"] for d in user["deps"]} == {"stage.py", "runs/extra/data.json"}
    assert list(user["params"]) == ["user/spec.yaml"]
    assert user["params"]["user/spec.yaml"]["train"]["learning_rate"] == 1e-5  # a float
    assert "learning_rate: 1e-05" in (repo / "user/dvc.lock").read_text()
    assert auditor.pipeline["user/dvc.yaml:s"] == "user/dvc.yaml"
    assert auditor.metrics_files() == [
        "runs/cifar10_t6/fid.json", "runs/root/m.json", "user/out/m.json"
    ]  # fmt: skip
    assert auditor.not_run() == []
    for path in auditor.metrics_files():
        result = auditor.audit(str(repo / path))
        assert result.ok, (path, result.problems)


def test_git_info_reads_dvc_lock_only_under_dvcs_lock(repo, tmp_path):
    """A stage's record says whether code differed from the commit; the pipeline's outputs
    (dvc.lock, and what it records) do not count. Another `dvc repro` rewriting dvc.lock holds
    DVC's lock: read meanwhile, a half-written lock names no outputs, and every committed
    output the run rewrote would count as code."""
    clone = tmp_path / "clone"
    shutil.copytree(repo, clone, symlinks=True)
    _run(["git", "add", "-A", "-f", "dvc.lock", "runs"], clone)
    _run(["git", "commit", "-qm", "outputs"], clone)
    lock, out = clone / "dvc.lock", clone / "runs/root/m.json"
    whole = lock.read_text()
    assert "runs/root/m.json" in whole
    found: dict = {}
    with edited(out, '{"rewritten": 1}'):
        with dvc_lock(clone):  # as `dvc repro` does while it writes the lock
            lock.write_text(whole[: whole.index("runs/root/m.json") - 40])
            reader = threading.Thread(target=lambda: found.update(git_info(clone)))
            reader.start()
            reader.join(timeout=5)
            assert reader.is_alive(), f"read the half-written lock: {found}"
            lock.write_text(whole)
        reader.join(timeout=120)
    assert "runs/root/m.json" in found["modified"]
    assert found["dirty"] is False, found


@pytest.mark.slow
def test_audit_all_covers_every_pipeline_and_names_stages_by_address(repo, monkeypatch):
    done = _audit(repo, monkeypatch, "--all")
    assert done.exit_code == 0, done.output
    assert "audit: 3 of 3 metrics files pass" in done.stdout
    for stage in ("stage make", "stage stages/extra/dvc.yaml:score", "stage user/dvc.yaml:s"):
        assert stage in done.stdout
    # from inside a pipeline's folder: the repository is still the root; lineage crosses files
    done = _audit(repo / "user", monkeypatch, "out/m.json:fid")
    assert done.exit_code == 0, done.output
    assert "fid = 12.0" in done.stdout and "stage stages/extra/dvc.yaml:make" in done.stdout
    assert "user/spec.yaml" in done.stdout and "runs/extra/data.json" in done.stdout
    assert find_root(repo / "stages/extra") == repo.resolve()


@pytest.mark.slow
def test_changes_in_any_pipeline_fail_the_audit_naming_them(repo, monkeypatch):
    def problems(path: str) -> list[str]:
        return Auditor(repo).audit(str(repo / path)).problems

    data = repo / "runs/extra/data.json"
    with edited(data, json.dumps({"fid": 5.0, "inception_score": 2.0, "kid": 0.01})):
        for path in ("user/out/m.json", "runs/cifar10_t6/fid.json"):  # its consumers
            assert any(p.startswith("runs/extra/data.json: changed after the run") for p in
                       problems(path)), path  # fmt: skip
        assert problems("runs/root/m.json") == []
    spec = repo / "user/spec.yaml"
    with edited(spec, spec.read_text().replace("seed: 3", "seed: 4")):
        assert "user/spec.yaml: seed was 3 at the run, now 4 (spec edited after the run)" in (
            problems("user/out/m.json")
        )
    metrics = repo / "user/out/m.json"
    with edited(metrics, json.dumps({"fid": 1.0, "inception_score": 2.0, "kid": 0.01})):
        done = _audit(repo, monkeypatch, "--all")
        assert done.exit_code == 1
        assert "user/out/m.json: key 'fid' is 1.0 but user/dvc.yaml:s wrote 12.0" in done.stdout
        assert "2 of 3 metrics files pass; failed: user/out/m.json" in done.stdout
    assert all(Auditor(repo).audit(str(repo / p)).ok for p in Auditor(repo).metrics_files())


@pytest.mark.slow
def test_pipeline_never_run_is_listed_not_failed_and_report_shows_fid(repo, monkeypatch):
    later = repo / "later/dvc.yaml"
    later.parent.mkdir()
    later.write_text(LATER_PIPELINE)
    try:
        assert Auditor(repo).not_run() == ["later/m.json"]
        done = _audit(repo, monkeypatch, "--all")
        assert done.exit_code == 0, done.output
        assert "not run yet (declared, never produced): later/m.json" in done.stdout
        (repo / "later/m.json").write_text('{"fid": 1.0}')  # a number with no lineage
        done = _audit(repo, monkeypatch, "--all")
        assert done.exit_code == 1 and "later/m.json: not an output of any stage" in done.stdout
    finally:
        shutil.rmtree(later.parent)
    md, _ = build_report(repo, "reports")
    text = md.read_text()
    assert "| cifar10_t6 | FID | 3 | 9.58 | stages/extra/dvc.yaml:score | pass |" in text
    assert "| cifar10_t6 | KID | 0.01 | - | stages/extra/dvc.yaml:score | pass |" in text
    assert "| 9.58 | cifar10_t6 | 3 (pass) |" in text
