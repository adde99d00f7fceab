"""Provenance records ("the ledger"): what every pipeline stage read, wrote and ran on.

A stage writes one JSON record when it succeeds, at `<experiment dir>/ledger/<stage>.json`
(e.g. runs/digits/ledger/train.json), declared in dvc.yaml as an out with `cache: false` and
committed to git like metrics.json. The record holds the resolved spec and its scientific hash,
the git commit (and whether the tree was dirty), the hash of requirements.lock, package versions,
devices, the seed, wall time, the hashes of the stage's inputs and outputs and the values in its
metrics files. Hashes follow DVC's md5 scheme (`md5_path`), so every entry can be compared with
dvc.lock; `drlx audit` (drlx/audit.py) does that.

Records are written with `drlx.io.write_json` (atomic), only at the end of a successful stage:
stages/common.py arms a `StageRun` when the arguments are parsed and finishes it at exit. Under
`dvc repro` always (inputs and outputs: the stage's deps and outs in dvc.yaml); a stage run by
hand writes one only with DRLX_LEDGER=1 (outputs: arguments whose help starts with "output").
"""

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drlx.io import md5_file, sha256_file, write_json

LEDGER_VERSION = 1
LEDGER_DIR = "ledger"
PACKAGES = (
    "jax", "jaxlib", "equinox", "optax", "diffrax", "grain", "orbax-checkpoint", "numpy",
    "pydantic", "dvc", "scipy", "scikit-learn", "drlx",
)  # fmt: skip
ALWAYS_IGNORED = (".git", ".hg", ".dvc")  # DVC never hashes these (dvc/ignore.py)
STAGES_READING_DATASET = ("prepare",)  # stages that read spec.data.path; they hash it


# ----------------------------------------------------------------------------- hashing (DVC md5)


def dvc_ignore(root: str | Path) -> Callable[[str, bool], bool]:
    """A predicate `ignored(relpath, is_dir)` for paths relative to the repository root: DVC's
    always-ignored folders plus the patterns of the root `.dvcignore` (gitignore syntax).
    Nested .dvcignore files are not read."""
    import pathspec

    file = Path(root) / ".dvcignore"
    lines = file.read_text().splitlines() if file.is_file() else []
    spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignored(relpath: str, is_dir: bool) -> bool:
        if Path(relpath).name in ALWAYS_IGNORED:
            return True
        return spec.match_file(relpath + "/" if is_dir else relpath)

    return ignored


def md5_path(path: str | Path, root: str | Path = ".") -> dict:
    """Hash a file or folder the way dvc.lock records it.

    A folder's md5 is the md5 of the JSON list of its files' {"md5", "relpath"} (sorted by
    relpath, `json.dumps(..., sort_keys=True)`), followed by ".dir" (dvc_data's Tree.digest).

    Arguments:
        path: the file or folder.
        root: the repository root (for `.dvcignore` and relative paths).

    Returns:
        {"md5", "size"} for a file; {"md5", "size", "nfiles"} for a folder.
    """
    path = Path(path)
    if path.is_file():
        return {"md5": md5_file(path), "size": path.stat().st_size}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to hash")
    ignored = dvc_ignore(root)
    rel_root = os.path.relpath(path.resolve(), Path(root).resolve())
    entries, size = [], 0
    for folder, dirs, files in os.walk(path):
        rel = Path(os.path.relpath(folder, path))
        repo_rel = os.path.normpath(os.path.join(rel_root, rel))
        dirs[:] = [d for d in dirs if not ignored(os.path.join(repo_rel, d), True)]
        for name in files:
            if ignored(os.path.join(repo_rel, name), False):
                continue
            file = Path(folder) / name
            entries.append({"md5": md5_file(file), "relpath": (rel / name).as_posix()})
            size += file.stat().st_size
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    md5 = hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"
    return {"md5": md5, "size": size, "nfiles": len(entries)}


LONG_LIST = 32  # longer lists of numbers (traces, histories) are recorded by their digest


def flatten_metrics(obj, prefix: str = "") -> dict:
    """Scalar leaves of a JSON object as {"a.b.0": value} (the keys `drlx audit PATH:key` takes;
    lists of dicts get their index). Short lists of numbers are kept whole, longer ones become
    "<list of N, sha256 ...>" so a record stays small and still detects an edit."""
    out = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, list) and len(value) > LONG_LIST:
            digest = hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]
            out[name] = f"<list of {len(value)}, sha256 {digest}>"
        else:
            out[name] = value
    return out


def read_metrics(path: str | Path) -> dict | None:
    """Flattened values of a JSON metrics file (an object at the top level), else None."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return flatten_metrics(obj) if isinstance(obj, dict) else None


# ----------------------------------------------------------------------------- environment


def _lock_outputs(root: Path, lock: str) -> list[str]:
    """The out paths of one dvc.lock, relative to `root`: a lock records them relative to its
    stage's `wdir` (dvc.yaml, next to the lock; default: the lock's folder)."""
    folder = Path(lock).parent

    def stages(path: Path) -> dict:
        try:
            found = (yaml.safe_load(path.read_text()) or {}).get("stages")
        except (OSError, yaml.YAMLError, AttributeError):
            return {}
        return found if isinstance(found, dict) else {}

    locked, defined = stages(root / lock), stages(root / folder / "dvc.yaml")
    outs = []
    for name, entry in locked.items():
        stage = defined.get(name.split("@")[0])
        stage = stage.get("do", stage) if isinstance(stage, dict) else {}  # foreach: under do
        wdir = stage.get("wdir", ".") if isinstance(stage, dict) else "."
        for out in entry.get("outs", []):
            outs.append(Path(os.path.normpath(folder / str(wdir) / out["path"])).as_posix())
    return outs


def pipeline_outputs(root: str | Path, locks: list[str] | None = None) -> list[str]:
    """Files a `dvc repro` rewrites: every dvc.lock (the root's, and `locks`, paths relative to
    `root`) and every out path they record, relative to `root`."""
    root = Path(root)
    locks = sorted({"dvc.lock", *(locks or [])})
    return locks + [out for lock in locks for out in _lock_outputs(root, lock)]


@contextlib.contextmanager
def dvc_lock(root: str | Path):
    """Hold DVC's repository lock (waiting for it) while reading its files; yields the `Repo`,
    or None outside a DVC repository. `dvc repro` releases the lock while a stage's command
    runs, and another `dvc repro` (drlx repro runs several) may be rewriting dvc.lock
    meanwhile: read unlocked, it can be half-written."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root), _wait_for_lock=True)
    except NotDvcRepoError:
        repo = None
    if repo is None:
        yield None
        return
    with repo, repo.lock:
        yield repo


def git_info(root: str | Path) -> dict:
    """Commit of HEAD and the tracked files that differ from it; "unknown" without git. The
    tree counts as dirty when anything but the pipeline's own outputs differs (a re-run rewrites
    committed metrics and records before its later stages start)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        prefix = git("rev-parse", "--show-prefix").strip()  # root, relative to git's top
        lines = git("status", "--porcelain", "-uno", "--", ".").splitlines()
        locks = git("ls-files", "--", ":(glob)**/dvc.lock").splitlines()  # relative to root
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, no commit yet
        return {"commit": "unknown", "dirty": "unknown", "modified": []}
    modified = [line[3:].split(" -> ")[-1].removeprefix(prefix) for line in lines]
    with dvc_lock(root):
        outputs = pipeline_outputs(root, locks)

    def managed(m: str) -> bool:  # an output, or the .gitignore DVC keeps next to outputs
        folder = m.removesuffix(".gitignore") if m.endswith("/.gitignore") else None
        return any(
            m == o or m.startswith(o + "/") or (folder is not None and o.startswith(folder))
            for o in outputs
        )

    code = [m for m in modified if not managed(m)]
    return {"commit": commit, "dirty": bool(code), "modified": modified[:50]}


def environment(root: str | Path) -> dict:
    """Code version, lock file, interpreter, packages and devices of this process."""
    lock = Path(root) / "requirements.lock"
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    if "jax" in sys.modules:  # only ask if the stage used JAX (asking starts a backend)
        jax = sys.modules["jax"]
        devices = [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}" for d in jax.devices()]
    else:
        devices = ["jax not used"]
    return {
        "git": git_info(root),
        "requirements_lock": {
            "path": "requirements.lock",
            "sha256": sha256_file(lock) if lock.is_file() else "missing",
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "devices": devices,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **_conv_backend(),
    }


def _conv_backend() -> dict:
    """{"conv_backend": {"requested": ..., "resolved": ...}} if this process made a network (the
    backend its convolutions ran on, drlx.ops.conv.resolve_backend), else nothing."""
    conv = sys.modules.get("drlx.ops.conv")
    used = conv.backends_used() if conv is not None else {}
    if not used:
        return {}
    requested, resolved = next(reversed(used.items()))  # the last one asked for
    return {"conv_backend": {"requested": requested, "resolved": resolved}}


# ----------------------------------------------------------------------------- a stage's record


@dataclass
class StageIO:
    """What a stage declares: its name, the paths it reads (deps), the spec files it is
    parameterised by (params), what it writes (outs) and where its record goes."""

    name: str
    deps: list[str]
    params: list[str]
    outs: list[str]
    ledger: str | None  # None: dvc.yaml declares no record for this stage (none is written)
    declared_by: str
    metrics: list[str] = field(default_factory=list)  # outs declared as metrics
    param_values: dict = field(default_factory=dict)  # params files as read at the start


def ledger_path_for(outs: list[str], stage: str) -> str:
    """Default record location: `<folder of the first output>/ledger/<stage>.json` (the stage
    name without its `@item`)."""
    folder = Path(outs[0]).parent if outs else Path(".")
    return (folder / LEDGER_DIR / f"{stage.split('@')[0]}.json").as_posix()


def is_ledger(path: str) -> bool:
    return Path(path).parent.name == LEDGER_DIR and path.endswith(".json")


def _find_stage(stages, addressing: str, cwd: Path, argv: list[str]):
    """The stage DVC is running. DVC_STAGE names it relative to where `dvc repro` was started,
    which a stage cannot know (it runs in its own `wdir`): `train@x` may be the root's or, when
    run from `stages/paper`, that folder's; `../../dvc.yaml:train@x` has lost its folder. So:
    the stage of that name whose dvc.yaml path ends like the named one and whose wdir is this
    process's working directory, and if several are, the one whose command is this process's."""
    file, _, name = addressing.rpartition(":")
    tail = tuple(part for part in Path(file or "dvc.yaml").parts if part not in ("..", "."))
    found = [
        s
        for s in stages
        if getattr(s, "name", None) == name
        and Path(s.path).parts[-len(tail) :] == tail
        and Path(s.wdir).resolve() == cwd.resolve()
    ]
    if len(found) > 1:
        found = [s for s in found if shlex.split(str(s.cmd))[-len(argv) :] == list(argv)]
    if len(found) != 1:
        where = ", ".join(sorted(s.addressing for s in found)) or "none"
        raise RuntimeError(
            f"ledger: DVC_STAGE={addressing!r} run in {cwd} matches {len(found)} stages ({where})"
        )
    return found[0]


def io_from_dvc(root: str | Path, addressing: str, argv: list[str]) -> StageIO:
    """The stage's deps, params and outs as dvc.yaml declares them (foreach resolved by DVC)."""
    from dvc.dependency.param import ParamsDependency

    root = Path(root).resolve()
    with dvc_lock(root) as repo:
        stage = _find_stage(repo.index.stages, addressing, Path.cwd(), argv)

        def rel(item) -> str:
            return Path(os.path.relpath(item.fs_path, root)).as_posix()

        deps = [rel(d) for d in stage.deps if not isinstance(d, ParamsDependency)]
        params = [rel(d) for d in stage.deps if isinstance(d, ParamsDependency)]
        outs = [rel(o) for o in stage.outs]
        metrics = [rel(o) for o in stage.outs if o.metric]
        name = stage.name
    ledgers = [o for o in outs if is_ledger(o)]
    ledger = ledgers[0] if ledgers else None
    if not ledgers:
        print(
            f"warning: no ledger record for {name}: declare "
            f"{ledger_path_for(outs, name)} (cache: false) among its outs in dvc.yaml",
            file=sys.stderr,
        )
    outs = [o for o in outs if o != ledger]
    return StageIO(name, deps, params, outs, ledger, "dvc.yaml", metrics)


def io_from_args(script: str, actions: list, args, root: str | Path) -> StageIO:
    """Outside DVC: arguments whose help starts with "output" are outputs; every other argument
    naming an existing path is an input; the script and stages/common.py are inputs too."""
    name = Path(script).stem
    outs, deps = [], [_rel(script, root)]
    common = Path(script).with_name("common.py")
    if common.is_file():
        deps.append(_rel(common, root))
    for action in actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "spec") or not isinstance(value, str):
            continue
        if (action.help or "").lower().startswith("output"):
            outs.append(_rel(value, root))
        elif Path(value).exists():
            deps.append(_rel(value, root))
    spec_path = getattr(args, "spec", None)
    params = [_rel(spec_path, root)] if spec_path else []
    return StageIO(name, deps, params, outs, ledger_path_for(outs, name), "arguments")


def _rel(path: str | Path, root: str | Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def spec_files(spec_path: str | Path) -> list[Path]:
    """The spec file and, if it `extends:` one, its base."""
    spec_path = Path(spec_path)
    raw = yaml.safe_load(spec_path.read_text()) or {}
    base = raw.get("extends") if isinstance(raw, dict) else None
    return [spec_path] + ([spec_path.parent / str(base)] if base else [])


def _hashes(paths: list[str], root: Path) -> dict:
    out = {}
    for p in paths:
        full = root / p
        out[p] = md5_path(full, root) if full.exists() else {"md5": "missing"}
    return out


def make_record(
    io: StageIO, spec, spec_path: str | Path, root: str | Path, started: float, argv: list[str]
) -> dict:
    """Build a stage's provenance record (hashes taken now, after the stage ran, as DVC does).

    Arguments:
        io: what the stage declares.
        spec: its validated ExperimentSpec.
        spec_path: the spec file it was given.
        root: the repository root; every path in the record is relative to it.
        started: `time.time()` when the stage started.
        argv: its command line.

    Returns:
        The record (a JSON-ready dict).
    """
    root = Path(root)
    finished = time.time()
    files = spec_files(spec_path)
    spec_entry = {
        "path": _rel(files[0], root),
        "md5": md5_file(files[0]),
        "base": {"path": _rel(files[1], root), "md5": md5_file(files[1])} if files[1:] else None,
        "scientific_hash": spec.scientific_hash(),
        "resolved": spec.model_dump(mode="json"),
    }
    metric_files = io.metrics or [o for o in io.outs if o.endswith(".json")]
    metrics = {}
    for path in metric_files:
        values = read_metrics(root / path)
        if values is not None:
            metrics[path] = values
    record = {
        "ledger_version": LEDGER_VERSION,
        "stage": io.name,
        "declared_by": io.declared_by,
        "command": argv,
        "started": _iso(started),
        "finished": _iso(finished),
        "wall_time_s": round(finished - started, 3),
        "spec": spec_entry,
        "seed": spec.seed,
        "deps": _hashes(io.deps, root),
        "params": {
            p: {**md5_path(root / p, root), "values": io.param_values.get(p)}
            for p in io.params
            if (root / p).is_file()
        },
        "outs": _hashes(io.outs, root),
        "metrics": metrics,
        "environment": environment(root),
    }
    data_path = getattr(spec.data, "path", None)
    if io.name.split("@")[0] in STAGES_READING_DATASET and data_path is not None:
        full = Path(data_path) if Path(data_path).is_absolute() else root / data_path
        found = md5_path(full, root) if full.exists() else {"md5": "missing"}
        record["dataset"] = {"path": str(data_path), **found}
    return record


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def read_record(path: str | Path) -> dict:
    """Load a record, with an error naming the file if it is not one."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no ledger record here (did the stage run?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a ledger record (invalid JSON: {err})") from None
    missing = [k for k in ("ledger_version", "stage", "deps", "outs", "spec") if k not in record]
    if not isinstance(record, dict) or missing:
        raise ValueError(f"{path}: not a ledger record (missing fields {missing})")
    return record


class StageRun:
    """One stage process: armed when its arguments are parsed, finished at exit. The record is
    written only if nothing failed (an uncaught exception, `fail()`, or an output not written
    during the run)."""

    def __init__(self, script: str, actions: list, args, argv: list[str]):
        self.started = time.time()
        self.args, self.argv = args, argv
        self.failed = False
        self.spec = None
        # Resolved now, not at exit: DVC's API starts threads, which a finishing interpreter
        # refuses.
        self.root = Path(os.environ.get("DVC_ROOT", "."))
        stage = os.environ.get("DVC_STAGE")
        if stage:
            self.io = io_from_dvc(self.root, stage, argv)
        else:
            self.io = io_from_args(script, actions, args, self.root)
        from dvc.utils.serialize import load_yaml  # DVC's reader, so values compare with dvc.lock

        for p in self.io.params:
            if (self.root / p).is_file():
                self.io.param_values[p] = load_yaml(str(self.root / p))

    def fail(self) -> None:
        self.failed = True

    def finish(self) -> Path | None:
        """Write the record (atomically); returns its path, or None after a failure (or when
        dvc.yaml declares no record for the stage)."""
        if self.failed or self.io.ledger is None:
            return None
        root, io = self.root, self.io
        # `raise SystemExit(message)` bypasses the exception hook: a stage that did not write
        # every output in this run (files newer than its start) failed, whatever its exit code.
        stale = [
            o
            for o in io.outs
            if not (root / o).exists()
            or ((root / o).is_file() and (root / o).stat().st_mtime < self.started - 1.0)
        ]
        if stale:
            print(f"ledger: no record for {io.name}: outputs not written {stale}", file=sys.stderr)
            return None
        spec = self.spec
        if spec is None:
            from drlx.spec import load_spec

            spec = load_spec(self.args.spec)
        record = make_record(io, spec, self.args.spec, root, self.started, self.argv)
        path = root / io.ledger
        write_json(path, record)
        return path
