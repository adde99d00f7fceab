"""A miniature of the paper pipeline, run by DVC as `make paper` runs it: stages/paper/dvc.yaml
on the paper spec of CDRL (cifar10_cdrl: DRL's energy network and stages plus the initializer;
each other paper spec trains two iterations in tests/test_paper_specs.py), shrunk (a few training
steps, a tiny network, 20 samples), on a synthetic CIFAR-10 binary archive in the real format and
random Inception weights in the real safetensors layout, each where the specs expect them.
Then `drlx audit` traces a reported FID to its reference statistics, samples, model, data, spec
and weights, and fails, naming what changed, after the FID or the reference statistics are
edited; `drlx report` puts each FID with its audit status next to the paper's."""

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import BATCHES, FAST_COMPILE_FLAG, cifar_records, write_tar

from drlx.evaluate.inception import write_synthetic_weights
from drlx.spec import ExperimentSpec, load_raw

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPECS = ("cifar10_cdrl",)
PAPER_FID = {"cifar10_cdrl": "4.31"}  # the paper's number, as the report prints it
STAGES = ("prepare", "train", "sample", "evaluate", "fid_reference", "fid", "density")
PAPER = "stages/paper/dvc.yaml"
WEIGHTS = "data/inception/pt_inception-2015-12-05.safetensors"  # the specs' inception_weights
ARCHIVE = "data/raw/cifar10/cifar-10-binary.tar.gz"  # the specs' data.path (cifar10 default)
RECORDS = 6  # images per batch file: 30 training images, two held-out sets of 3

# The paper specs as they are (schedule, sampler, objective, network structure), made small.
SHRINK = {
    "model": {"width": 8, "blocks_per_resolution": 1, "embed_dim": 16},
    "sampler": {"num_steps": 2},
    "train": {"num_steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 1},
    "evaluate": {"num_samples": 20, "num_projections": 8, "num_draws": 2, "draw_size": 3},
    "runtime": {"progress": False, "sample_batch_size": 20},
    "density": {
        "num_heldout": 3, "num_chains": 2, "num_annealing_steps": 4, "top_chains": 4,
        "long_run_steps": 20, "long_run_thin": 10, "long_run_horizons": [10],
        "long_run_chains": 4,
    },
}  # fmt: skip
SHRINK_INITIALIZER = {"width": 8, "num_res_blocks": 1, "groups": 4, "warmup_steps": 1}


def _env(repo: Path) -> dict:
    return {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(repo),
        "PYTHONPATH": str(repo),  # the copy's drlx, not the installed one: what DVC hashed ran
        "JAX_PLATFORMS": "cpu",
        # one persistent XLA cache for every stage process (outside the repository, which stays
        # clean): the Inception network of fid_reference and fid, and shared programs, compile once
        "JAX_COMPILATION_CACHE_DIR": str(repo.parent / "jax_cache"),
        "XLA_FLAGS": FAST_COMPILE_FLAG,  # tests/helpers.py: compiling is most of these stages
        "DVC_NO_ANALYTICS": "1",
        "COLUMNS": "250",  # the lineage tree unwrapped
        "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
    }  # fmt: skip


def _run(cmd: list, repo: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=repo, capture_output=True, text=True, timeout=timeout,
        env=_env(repo),
    )  # fmt: skip


def _ok(cmd: list, repo: Path, timeout: int = 120) -> str:
    done = _run(cmd, repo, timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _audit(repo: Path, *targets: str) -> subprocess.CompletedProcess:
    """The `drlx` command in the copy, as a user runs it."""
    return _run([BIN / "drlx", "audit", *targets], repo)


def _merge(raw: dict, over: dict) -> dict:
    out = dict(raw)
    for key, value in over.items():
        out[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def shrunk_spec(name: str) -> str:
    """specs/NAME.yaml with SHRINK over it, still extending the same base (the stages' params
    name the base too). The file keeps its name, so the report matches it to the paper's."""
    raw, _ = load_raw(ROOT / "specs" / f"{name}.yaml")
    over = dict(SHRINK)
    if raw.get("initializer") is not None:
        over["initializer"] = SHRINK_INITIALIZER
    spec = _merge(raw, over)
    ExperimentSpec.model_validate(spec)  # valid before DVC runs it
    head = {"extends": "bases/drl_image.yaml", "name": spec.pop("name")}
    text = yaml.safe_dump({**head, **spec}, sort_keys=False)
    return f"# {name}, shrunk by tests/test_paper_pipeline.py\n{text}"


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> tuple[Path, str, float]:
    """A copy of the repository (code, specs, both pipelines) with the miniature, committed,
    then `dvc repro stages/paper/dvc.yaml`; returns the copy, DVC's output and its seconds."""
    repo = tmp_path_factory.mktemp("paper") / "repo"
    for item in ("drlx", "stages", "specs"):  # not the other pipelines' locks: no outputs here
        ignore = shutil.ignore_patterns("__pycache__", "dvc.lock")
        shutil.copytree(ROOT / item, repo / item, ignore=ignore)
    for item in ("dvc.yaml", "params.yaml", ".dvcignore", "requirements.lock"):
        shutil.copy(ROOT / item, repo / item)
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/data/\n")
    for name in SPECS:
        (repo / "specs" / f"{name}.yaml").write_text(shrunk_spec(name))
    experiments = {name: {"base": "specs/bases/drl_image.yaml"} for name in SPECS}
    # no SVHN here for the ood stage, and no class-conditional experiment for the guided stages
    params = {"experiments": experiments, "ood_experiments": {}, "guided_experiments": {}}
    (repo / "stages/paper/params.yaml").write_text(yaml.safe_dump(params))
    (repo / ARCHIVE).parent.mkdir(parents=True)
    write_tar(repo / ARCHIVE, {b: cifar_records(RECORDS, i)[0] for i, b in enumerate(BATCHES)})
    write_synthetic_weights(repo / WEIGHTS)
    _ok(["git", "init", "-q"], repo)
    _ok([BIN / "dvc", "init", "-q"], repo)
    _ok(["git", "add", "-A"], repo)
    _ok(["git", "commit", "-qm", "code, specs and the miniature"], repo)
    start = time.monotonic()
    out = _ok([BIN / "dvc", "repro", PAPER], repo, timeout=1200)
    return repo, out, time.monotonic() - start


@contextlib.contextmanager
def replaced(path: Path, write):
    """`write(path)` replaces the file for the block; the original is back afterwards."""
    original = path.read_bytes()
    path.unlink()  # DVC may have linked it to its cache
    try:
        write(path)
        yield
    finally:
        path.unlink(missing_ok=True)
        path.write_bytes(original)


@pytest.mark.slow
def test_every_paper_stage_runs_and_writes_fid(paper_run):
    repo, out, seconds = paper_run
    print(f"dvc repro {PAPER}: {seconds:.0f} s")
    for name in SPECS:
        for stage in STAGES:
            assert f"Running stage '{PAPER}:{stage}@{name}'" in out, (stage, name, out)
        fid = json.loads((repo / f"runs/{name}/fid.json").read_text())
        assert fid["experiment"] == name and fid["num_samples"] == 20
        assert all(math.isfinite(fid[k]) for k in ("fid", "inception_score", "kid")), fid
        weights = hashlib.sha256((repo / WEIGHTS).read_bytes()).hexdigest()
        assert fid["inception_weights_sha256"] == weights
        record = json.loads((repo / f"runs/{name}/ledger/fid.json").read_text())
        assert record["metrics"][f"runs/{name}/fid.json"]["fid"] == fid["fid"]
        assert record["environment"]["git"]["dirty"] is False
        dataset = json.loads((repo / f"runs/{name}/ledger/prepare.json").read_text())["dataset"]
        assert dataset["path"] == ARCHIVE
    assert (repo / "stages/paper/dvc.lock").is_file() and not (repo / "dvc.lock").exists()
    again = _ok([BIN / "dvc", "repro", PAPER], repo)
    assert "Running stage" not in again  # everything recorded: nothing to re-run


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_audit_traces_a_reported_fid(paper_run, name):
    repo, _, _ = paper_run
    done = _audit(repo, f"runs/{name}/fid.json:fid")
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    value = json.loads((repo / f"runs/{name}/fid.json").read_text())["fid"]
    assert f"fid = {value!r}" in text and "inception_score =" not in text
    for stage in STAGES[:3] + ("fid_reference", "fid"):  # the FID's whole lineage
        assert f"stage {PAPER}:{stage}@{name}" in text, (stage, text)
    for path in (f"runs/{name}/fid_reference.npz", f"runs/{name}/samples.npz",
                 f"runs/{name}/model.eqx", WEIGHTS, f"specs/{name}.yaml",
                 "specs/bases/drl_image.yaml", f"dataset {ARCHIVE}"):  # fmt: skip
        assert path in text, (path, text)
    assert "✗" not in text and "FAIL" not in text
    assert "audit: 1 of 1 metrics files pass" in text


@pytest.mark.slow
def test_audit_fails_after_the_fid_is_edited(paper_run):
    repo, _, _ = paper_run
    name = SPECS[0]
    path = repo / f"runs/{name}/fid.json"
    values = json.loads(path.read_text())

    def edit(p: Path) -> None:
        p.write_text(json.dumps({**values, "fid": values["fid"] * 0.5}, indent=2))

    with replaced(path, edit):
        done = _audit(repo, f"runs/{name}/fid.json:fid")
        assert done.returncode == 1, done.stdout
        assert f"FAIL: runs/{name}/fid.json: key 'fid' is {values['fid'] * 0.5!r}" in done.stdout
        assert f"{PAPER}:fid@{name} wrote {values['fid']!r}" in done.stdout
        assert "key 'inception_score'" not in done.stdout  # only the edited number
        assert f"failed: runs/{name}/fid.json" in done.stdout
    assert _audit(repo, f"runs/{name}/fid.json:fid").returncode == 0  # restored: passes again


@pytest.mark.slow
def test_audit_fails_after_the_reference_statistics_are_edited(paper_run):
    repo, _, _ = paper_run
    name = SPECS[-1]
    path = repo / f"runs/{name}/fid_reference.npz"
    with np.load(path) as arrays:
        stats = dict(arrays)

    def edit(p: Path) -> None:  # another valid file of statistics: a shifted mean
        with p.open("wb") as f:
            np.savez(f, **{**stats, "mu": stats["mu"] + 1.0})

    with replaced(path, edit):
        done = _audit(repo, f"runs/{name}/fid.json:fid")
        assert done.returncode == 1, done.stdout
        assert f"FAIL: runs/{name}/fid_reference.npz: changed after the run" in done.stdout
        assert "key 'fid'" not in done.stdout  # the number is as written; its input is not
    assert _audit(repo, f"runs/{name}/fid.json:fid").returncode == 0


@pytest.mark.slow
def test_audit_all_and_report_cover_the_paper_pipeline(paper_run):
    repo, _, _ = paper_run
    done = _audit(repo, "--all")
    assert done.returncode == 0, done.stdout
    files = [f"runs/{n}/{f}" for n in SPECS for f in ("metrics.json", "fid.json")]
    files += [f"runs/{n}/density_metrics.json" for n in SPECS]
    assert f"audit: {len(files)} of {len(files)} metrics files pass" in done.stdout
    for path in files:
        assert path in done.stdout
    assert "not run yet" in done.stdout and "runs/digits/metrics.json" in done.stdout

    _ok([BIN / "drlx", "report"], repo)
    report = (repo / "reports/report.md").read_text()
    for name in SPECS:
        paper = PAPER_FID[name]
        value = json.loads((repo / f"runs/{name}/fid.json").read_text())["fid"]
        row = f"| {name} | FID | {value:.6g} | {paper} | {PAPER}:fid@{name} | pass |"
        assert row in report, report
        assert f"| {paper} | {name} | {value:.6g} (pass) |" in report  # the paper's table
        assert f"| {name} | KID |" in report and f"| {name} | IS |" in report
    assert "| fail |" not in report
