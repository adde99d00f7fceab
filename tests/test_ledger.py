"""The ledger: DVC-compatible hashes (checked against a dvc.lock that DVC itself wrote), the
contents of a stage's record, and no record when a stage fails."""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from drlx.ledger import StageRun, flatten_metrics, git_info, md5_path, read_record
from drlx.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def _env(home: Path, path: str | None = None) -> dict:
    return {
        "PATH": path or f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "DVC_NO_ANALYTICS": "1",
    }


def test_md5_of_files_and_folders_matches_dvc_lock(tmp_path: Path):
    (tmp_path / "a.txt").write_bytes(b"line one\r\nline two\r\n")  # CRLF: hashed as bytes
    tree = tmp_path / "d"
    for rel, content in {
        "x.bin": bytes(range(256)) * 40,
        "sub/y.txt": b"why",
        "sub/deeper/z.txt": b"",
        "sub-b/w.txt": b"sorted by relpath, not by walk order",
        "Zed.txt": b"upper case sorts first",
        "\u00e9t\u00e9.txt": b"non-ascii name",
        "skip.tmp": b"ignored by .dvcignore",
        "__pycache__/m.pyc": b"ignored too",
    }.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    (tmp_path / ".dvcignore").write_text("*.tmp\n__pycache__/\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp a.txt out.txt\n    deps: [a.txt, d]\n    outs: [out.txt]\n"
    )
    for cmd in ([DVC, "init", "--no-scm", "-q"], [DVC, "repro", "-q"]):
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(tmp_path))
        assert done.returncode == 0, done.stdout + done.stderr
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["copy"]
    entries = {e["path"]: e for e in lock["deps"] + lock["outs"]}
    for path in ("a.txt", "d", "out.txt"):
        ours = md5_path(tmp_path / path, tmp_path)
        assert {k: entries[path][k] for k in ours} == ours, path
    assert md5_path(tmp_path / "d", tmp_path)["nfiles"] == 6  # the two ignored files left out
    assert (
        md5_path(tmp_path / "a.txt")["md5"] == hashlib.md5(b"line one\r\nline two\r\n").hexdigest()
    )


def test_flatten_metrics_names_every_scalar():
    trace = [0.5] * 100
    obj = {"fid": 3.5, "levels": [{"logz": 1.0}, {"logz": 2.0}], "ks": [1, 2], "a": {"b": True}}
    digest = hashlib.sha256(json.dumps(trace).encode()).hexdigest()[:16]
    assert flatten_metrics({**obj, "trace": trace}) == {
        "fid": 3.5,
        "levels.0.logz": 1.0,
        "levels.1.logz": 2.0,
        "ks": [1, 2],
        "a.b": True,
        "trace": f"<list of 100, sha256 {digest}>",
    }
    edited = flatten_metrics({"trace": [*trace[:-1], 0.25]})["trace"]
    assert edited.startswith("<list of 100") and edited != f"<list of 100, sha256 {digest}>"


SPEC = """\
extends: bases/toy2d.yaml
name: rec
seed: 7
data: {name: two_moons, num_train: 100, num_heldout: 10}
runtime: {progress: false}
"""


def test_record_contents_outside_dvc_and_without_git(tmp_path: Path, monkeypatch):
    (tmp_path / "specs/bases").mkdir(parents=True)
    shutil.copy(ROOT / "specs/bases/toy2d.yaml", tmp_path / "specs/bases/toy2d.yaml")
    (tmp_path / "specs/rec.yaml").write_text(SPEC)
    (tmp_path / "requirements.lock").write_text("numpy==2.4.6\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/fake.py").write_text("# a stage\n")
    (tmp_path / "in.npz").write_bytes(b"input bytes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # git absent: "unknown"

    p = argparse.ArgumentParser()
    p.add_argument("--spec")
    p.add_argument("--data", help="input data")
    p.add_argument("--metrics", help="output: metrics (JSON)")
    argv = ["--spec", "specs/rec.yaml", "--data", "in.npz", "--metrics", "out/metrics.json"]
    args = p.parse_args(argv)
    run = StageRun("stages/fake.py", p._actions, args, ["stages/fake.py", *argv])
    run.spec = load_spec("specs/rec.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/metrics.json").write_text(json.dumps({"swd": 0.25, "d": {"n": 3}}))
    path = run.finish()

    assert path == Path("out/ledger/fake.json")
    record = read_record(path)

    def md5(rel: str) -> str:
        return hashlib.md5((tmp_path / rel).read_bytes()).hexdigest()

    assert record["stage"] == "fake" and record["declared_by"] == "arguments"
    assert record["spec"]["scientific_hash"] == load_spec("specs/rec.yaml").scientific_hash()
    assert record["spec"]["md5"] == md5("specs/rec.yaml")
    assert record["spec"]["base"] == {
        "path": "specs/bases/toy2d.yaml",
        "md5": md5("specs/bases/toy2d.yaml"),
    }
    assert record["spec"]["resolved"]["data"]["name"] == "two_moons"
    assert record["seed"] == 7
    assert set(record["deps"]) == {"stages/fake.py", "in.npz"}
    assert record["deps"]["in.npz"] == {"md5": md5("in.npz"), "size": len(b"input bytes")}
    assert record["outs"]["out/metrics.json"]["md5"] == md5("out/metrics.json")
    assert record["metrics"] == {"out/metrics.json": {"swd": 0.25, "d.n": 3}}
    assert record["params"]["specs/rec.yaml"]["values"]["seed"] == 7
    env = record["environment"]
    assert env["git"]["commit"] == "unknown"
    assert env["requirements_lock"]["sha256"] == hashlib.sha256(b"numpy==2.4.6\n").hexdigest()
    assert env["packages"]["jax"] == __import__("jax").__version__
    assert env["devices"] and record["wall_time_s"] >= 0


STAGE = """\
from common import load_experiment, parser

p = parser("a test stage")
p.add_argument("--out", help="output: numbers")
p.add_argument("--fail", action="store_true")
p.add_argument("--exit", action="store_true")
args = p.parse_args()
load_experiment(args.spec)
if args.exit:  # a clean error message: SystemExit, which no exception hook sees
    raise SystemExit("error: bad input")
open(args.out, "w").write('{"v": 1}')
if args.fail:
    raise RuntimeError("the stage failed after writing")
"""


def test_record_written_on_success_only(tmp_path: Path):
    (tmp_path / "stages").mkdir()
    shutil.copy(ROOT / "stages/common.py", tmp_path / "stages/common.py")
    (tmp_path / "stages/probe.py").write_text(STAGE)
    (tmp_path / "specs/bases").mkdir(parents=True)
    shutil.copy(ROOT / "specs/bases/toy2d.yaml", tmp_path / "specs/bases/toy2d.yaml")
    (tmp_path / "specs/rec.yaml").write_text(SPEC)
    (tmp_path / "runs").mkdir()
    cmd = [sys.executable, "stages/probe.py", "--spec", "specs/rec.yaml", "--out", "runs/m.json"]
    ledger = tmp_path / "runs/ledger/probe.json"

    env = {**os.environ, "DRLX_LEDGER": "1"}  # by hand (outside DVC): a record only on request
    env.pop("DVC_STAGE", None)
    failed = subprocess.run([*cmd, "--fail"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert failed.returncode != 0 and "the stage failed" in failed.stderr
    assert not ledger.exists()

    ok = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    record = read_record(ledger)
    assert record["metrics"] == {"runs/m.json": {"v": 1}}
    assert record["environment"]["git"]["commit"] == "unknown"  # tmp_path is not a repository

    ledger.unlink()  # the output of the run above is still there, older than the next start
    os.utime(tmp_path / "runs/m.json", (1e9, 1e9))
    exited = subprocess.run([*cmd, "--exit"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert exited.returncode == 1 and "error: bad input" in exited.stderr
    assert not ledger.exists()


def test_git_dirty_ignores_the_pipelines_own_outputs(tmp_path: Path):
    lock = "schema: '2.0'\nstages:\n  s:\n    cmd: x\n    outs:\n    - path: runs/m.json\n"
    # a second pipeline whose stage runs from the root (wdir), so its lock's paths are the root's
    sub_lock = "schema: '2.0'\nstages:\n  p@a:\n    cmd: x\n    outs:\n    - path: runs/p.json\n"
    sub_yaml = "stages:\n  p:\n    foreach: [a]\n    do:\n      wdir: ../..\n      cmd: x\n"
    files = {"code.py": "a = 1\n", "runs/m.json": "{}\n", "runs/p.json": "{}\n", "dvc.lock": lock}
    files |= {"stages/sub/dvc.lock": sub_lock, "stages/sub/dvc.yaml": sub_yaml}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {**_env(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, env=env, capture_output=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_info(tmp_path) == {"commit": head, "dirty": False, "modified": []}
    (tmp_path / "runs/m.json").write_text('{"v": 2}\n')  # a re-run rewrote a committed metric
    (tmp_path / "runs/p.json").write_text('{"v": 2}\n')  # and one of the other pipeline's
    (tmp_path / "untracked.py").write_text("")
    expected = {"commit": head, "dirty": False, "modified": ["runs/m.json", "runs/p.json"]}
    assert git_info(tmp_path) == expected
    (tmp_path / "code.py").write_text("a = 2\n")
    info = git_info(tmp_path)
    assert info["dirty"] is True and info["modified"] == ["code.py", "runs/m.json", "runs/p.json"]
