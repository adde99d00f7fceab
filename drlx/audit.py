"""`drlx audit`: trace a number back to the spec, data, code and environment that produced it,
and check that nothing on that path changed after the fact.

Three witnesses are compared for every file on the path: dvc.lock (what DVC recorded after the
stage), the stage's ledger record (what the stage itself recorded, drlx/ledger.py) and the file
on disk now. The ledger record is itself an out in dvc.lock, so an edited record is caught too.
A difference is a *problem* (the audit fails) when the number no longer follows from what is
checked in: a metric edited by hand, a spec edited, data or a model replaced, code changed
since the run, a lock re-committed without re-running the stage. A cached file absent from the
workspace, or an environment that differs from the run's, is only a *warning*.

Every pipeline of the repository is covered: each `dvc.yaml` DVC finds (the root one,
stages/paper/dvc.yaml, any a user adds) with the `dvc.lock` next to it. Lock paths are relative
to their stage's `wdir`; they are rebased to the repository root, as the ledger records them.
Stages of the root dvc.yaml are named as before (`prepare@digits`), those of other pipelines by
DVC's address from the root (`stages/paper/dvc.yaml:fid@cifar10_t6`).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from drlx.ledger import is_ledger, md5_path, read_metrics, read_record

CODE = ("drlx", "stages")  # dependencies shown as code (with any *.py file)


@dataclass
class Node:
    """One line of the lineage tree; `ok` is True (verified), False (a problem) or None (a
    warning or nothing to verify)."""

    label: str
    ok: bool | None = True
    children: list["Node"] = field(default_factory=list)

    def add(self, label: str, ok: bool | None = True) -> "Node":
        child = Node(label, ok)
        self.children.append(child)
        return child


@dataclass
class Result:
    """The audit of one metrics file: its lineage tree, the problems (each naming the file and,
    for metrics, the key) and the warnings."""

    target: str
    tree: Node
    problems: list[str]
    warnings: list[str]
    failed_keys: set[str] = field(default_factory=set)  # metric keys whose value changed

    @property
    def ok(self) -> bool:
        return not self.problems


def find_root(start: str | Path = ".") -> Path:
    """The DVC repository at or above `start`: the closest folder holding `.dvc/` (so from
    stages/paper/ too, whose dvc.yaml is not the root one), else the closest holding dvc.yaml."""
    start = Path(start).resolve()
    folders = (start, *start.parents)
    for folder in folders:
        if (folder / ".dvc").is_dir() and (folder / "dvc.yaml").is_file():
            return folder
    for folder in folders:
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"{start}: no dvc.yaml here or above (not inside a drlx pipeline)")


def split_target(target: str) -> tuple[str, str | None]:
    """`PATH[:key]` -> (PATH, key or None); a path that itself contains ':' wins if it exists."""
    if ":" in target and not Path(target).exists():
        path, key = target.rsplit(":", 1)
        return path, key or None
    return target, None


def _display(dvcfile: str, name: str) -> str:
    """A stage's name as DVC addresses it from the root: `NAME` in the root dvc.yaml,
    `PATH/dvc.yaml:NAME` elsewhere."""
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def _read_lock(path: Path) -> dict:
    """The `stages` of a dvc.lock, read as DVC writes it: YAML 1.2 (ruamel). PyYAML's YAML 1.1
    reads a float such as `1e-05` (a learning rate of specs/cifar10_cdrl.yaml) as a string, which
    then differs from the spec's value and fails the audit of every stage of that spec."""
    from dvc.exceptions import DvcException
    from dvc.utils.serialize import parse_yaml

    try:
        data = parse_yaml(path.read_text(), str(path)) or {}
    except DvcException as err:
        raise ValueError(f"{path}: not readable as YAML ({err})") from None
    entries = (data.get("stages") or {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: 'stages' is not a mapping")
    return entries


def _short(md5: str) -> str:
    return md5[:10] if md5 else "?"


class Auditor:
    """Audits metrics files of one repository; stages already checked are not re-checked, and
    appear once in full per tree."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.lock: dict[str, dict] = {}  # stage (display name) -> its lock entry, paths rebased
        self.pipeline: dict[str, str] = {}  # stage -> its dvc.yaml (relative to the root)
        self.declared: dict[str, str] = {}  # metrics file declared in a dvc.yaml -> its stage
        self.locks: list[str] = []  # the dvc.lock files read
        for dvcfile, stages in self._pipelines().items():
            lock = self.root / (os.path.splitext(dvcfile)[0] + ".lock")  # DVC's lock naming
            for name, (_wdir, metrics) in stages.items():
                for path in metrics:
                    self.declared[path] = _display(dvcfile, name)
            if not lock.is_file():
                continue  # a pipeline never run: nothing of it to audit
            self.locks.append(self.rel(lock))
            entries = _read_lock(lock)
            for name, entry in entries.items():
                # a stage gone from dvc.yaml keeps its lock entry: its wdir is the file's folder
                wdir = stages[name][0] if name in stages else (self.root / dvcfile).parent
                stage = _display(dvcfile, name)
                self.lock[stage] = self._rebase(entry or {}, wdir)
                self.pipeline[stage] = dvcfile
        if not self.locks:
            lock = self.root / "dvc.lock"
            raise FileNotFoundError(f"{lock}: no dvc.lock (run `dvc repro` first)")
        self.producer = {
            out["path"]: name for name, entry in self.lock.items() for out in entry.get("outs", [])
        }
        self._md5: dict[str, dict | None] = {}

    def _pipelines(self) -> dict[str, dict[str, tuple[Path, list[str]]]]:
        """Every dvc.yaml of the repository (as DVC collects them, foreach resolved) ->
        {stage name: (its wdir, its metrics files relative to the root)}; the root's first."""
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
        from dvc.stage import PipelineStage

        out: dict[str, dict[str, tuple[Path, list[str]]]] = {"dvc.yaml": {}}
        try:
            with Repo(str(self.root)) as repo:
                for stage in repo.index.stages:
                    if not isinstance(stage, PipelineStage):  # a .dvc file: data, no lock
                        continue
                    dvcfile = self.rel(stage.dvcfile.path)
                    metrics = [self.rel(o.fs_path) for o in stage.outs if o.metric]
                    wdir = Path(stage.wdir).resolve()  # as the root: symlinks resolved
                    out.setdefault(dvcfile, {})[stage.name] = (wdir, metrics)
        except DvcException as err:
            raise ValueError(f"{self.root}: DVC cannot read the pipelines ({err})") from None
        return out

    def _rebase(self, entry: dict, wdir: Path) -> dict:
        """A lock entry with its deps', outs' and params files' paths relative to the root."""

        def rebase(path: str) -> str:
            if "://" in path:  # an external dependency (a URL): not a file of the repository
                return path
            return Path(os.path.relpath(wdir / path, self.root)).as_posix()

        entry = dict(entry)
        for group in ("deps", "outs"):
            items = entry.get(group) or []
            entry[group] = [{**item, "path": rebase(item["path"])} for item in items]
        if entry.get("params"):
            entry["params"] = {rebase(file): values for file, values in entry["params"].items()}
        return entry

    # ------------------------------------------------------------------ helpers

    def rel(self, path: str | Path) -> str:
        full = Path(path) if Path(path).is_absolute() else Path.cwd() / path
        try:
            return full.resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"{path}: outside the pipeline's repository {self.root}") from None

    def disk_md5(self, path: str) -> dict | None:
        if path not in self._md5:
            full = self.root / path
            self._md5[path] = md5_path(full, self.root) if full.exists() else None
        return self._md5[path]

    def metrics_files(self) -> list[str]:
        """Every file declared under `metrics:` in any dvc.yaml of the repository (as DVC
        resolves them) that a stage has produced (listed in a dvc.lock) or that exists on disk
        (a number without a lineage, which the audit fails); see `not_run` for the others."""
        return sorted(p for p in self.declared if p in self.producer or (self.root / p).exists())

    def not_run(self) -> list[str]:
        """Declared metrics files that no stage has produced yet and that are not on disk."""
        return sorted(set(self.declared) - set(self.metrics_files()))

    # ------------------------------------------------------------------ the audit

    def audit(self, target: str, key: str | None = None) -> Result:
        """Audit one metrics file (and optionally one key of it).

        Arguments:
            target: path of a metrics file (relative to the current folder, or absolute).
            key: a flattened key ("a.b") to show and check alone.

        Returns:
            The Result: lineage tree, problems, warnings.
        """
        path = self.rel(target)
        problems: list[str] = []
        warnings: list[str] = []
        result = Result(path, Node(path), problems, warnings)
        stage = self.producer.get(path)
        if stage is None:
            problems.append(f"{path}: not an output of any stage in a dvc.lock")
            result.tree.ok = False
            return result
        record = self._load_record(stage, [], [])
        current = read_metrics(self.root / path)
        recorded = (record or {}).get("metrics", {}).get(path)
        if current is None:
            problems.append(f"{path}: missing or not a JSON object of metrics")
            current = {}
        if key is not None and key not in current:
            problems.append(f"{path}: no key {key!r} (keys: {', '.join(sorted(current))})")
        for k in sorted(current):  # every key is checked; the tree shows the one asked for
            ok = True
            if recorded is not None:
                if k not in recorded:
                    ok = False
                    problems.append(f"{path}: key {k!r} was not written by {stage}")
                elif recorded[k] != current[k]:
                    ok = False
                    problems.append(
                        f"{path}: key {k!r} is {current[k]!r} but {stage} wrote "
                        f"{recorded[k]!r} (edited after the run)"
                    )
            if not ok:
                result.failed_keys.add(k)
            if key in (None, k):
                result.tree.add(f"{k} = {current[k]!r}", ok)
        if recorded is not None:
            for k in sorted(set(recorded) - set(current)):
                result.failed_keys.add(k)
                problems.append(f"{path}: key {k!r} written by {stage} has been removed")
        result.tree.children.append(self.stage_node(stage, set(), problems, warnings))
        result.tree.ok = not problems
        result.problems[:] = dict.fromkeys(problems)  # a file shared by stages: said once
        result.warnings[:] = dict.fromkeys(warnings)
        return result

    def _load_record(self, stage: str, problems: list[str], warnings: list[str]) -> dict | None:
        entry = self.lock[stage]
        ledgers = [o for o in entry.get("outs", []) if is_ledger(o["path"])]
        if not ledgers:
            problems.append(
                f"{stage}: dvc.lock lists no ledger record among its outs "
                "(declare runs/<exp>/ledger/<stage>.json in dvc.yaml and re-run)"
            )
            return None
        path = ledgers[0]["path"]
        disk = self.disk_md5(path)
        if disk is None:
            problems.append(f"{path}: ledger record of {stage} is missing")
            return None
        if disk["md5"] != ledgers[0].get("md5"):
            problems.append(f"{path}: ledger record edited after the run (md5 is not dvc.lock's)")
        try:
            return read_record(self.root / path)
        except (OSError, ValueError) as err:
            problems.append(str(err))
            return None

    def stage_node(self, stage: str, shown: set, problems: list[str], warnings: list[str]) -> Node:
        """The subtree of one stage: its record, outputs, spec, code, inputs (recursively, each
        producing stage shown once per tree) and environment."""
        if stage in shown:
            return Node(f"stage {stage} (shown above)", None)
        shown.add(stage)
        own_problems: list[str] = []
        own_warnings: list[str] = []
        node = Node(f"stage {stage}")
        entry = self.lock[stage]
        record = self._load_record(stage, own_problems, own_warnings) or {}
        if record:
            node.label += (
                f"  [ran {record.get('started', '?')}, {record.get('wall_time_s', '?')} s, "
                f"ledger {record.get('declared_by', '?')}]"
            )
        outs = [o for o in entry.get("outs", []) if not is_ledger(o["path"])]
        if outs:
            out_node = node.add("outputs")
            for out in outs:
                self._file(out_node, stage, out, record.get("outs"), own_problems, own_warnings)
        self._spec(node, stage, entry, record, shown, own_problems, own_warnings)
        code = node.add("code")
        inputs = node.add("inputs")
        for dep in entry.get("deps", []):
            producer = self.producer.get(dep["path"])
            is_code = Path(dep["path"]).suffix == ".py" or Path(dep["path"]).parts[0] in CODE
            parent = code if is_code and not producer else inputs
            child = self._file(parent, stage, dep, record.get("deps"), own_problems, own_warnings)
            if producer:
                child.children.append(self.stage_node(producer, shown, problems, warnings))
        for group in (code, inputs):
            if not group.children:
                node.children.remove(group)
        if "dataset" in record:
            self._dataset(node, record["dataset"], own_problems, own_warnings)
        if record:
            self._environment(node, record, shown, own_warnings)
        problems.extend(own_problems)
        warnings.extend(own_warnings)
        node.ok = not own_problems
        code.ok = all(c.ok is not False for c in code.children)
        return node

    def _file(self, parent, stage, lock_entry, recorded, problems, warnings) -> Node:
        path = lock_entry["path"]
        lock_md5 = lock_entry.get("md5")
        node = parent.add(f"{path}  md5 {_short(lock_md5)}")
        if recorded is not None:
            rec = recorded.get(path)
            if rec is None:
                problems.append(f"{path}: in dvc.lock for {stage} but not in its ledger record")
                node.ok = False
            elif rec.get("md5") != lock_md5:
                problems.append(
                    f"{path}: dvc.lock has md5 {lock_md5} but {stage} recorded "
                    f"{rec.get('md5')} (dvc.lock changed without re-running the stage)"
                )
                node.ok = False
        disk = self.disk_md5(path)
        if disk is None:
            warnings.append(f"{path}: not in the workspace (`dvc pull`/`dvc checkout` to verify)")
            node.label += "  (not in workspace)"
            node.ok = None if node.ok else node.ok
        elif disk["md5"] != lock_md5:
            problems.append(
                f"{path}: changed after the run: md5 {disk['md5']} now, {lock_md5} in "
                "dvc.lock" + ("" if recorded is None else " and the ledger")
            )
            node.label += f"  (now {_short(disk['md5'])})"
            node.ok = False
        return node

    def _spec(self, node, stage, entry, record, shown, problems, warnings) -> None:
        from dvc.utils.serialize import load_yaml

        from drlx.ledger import flatten_metrics

        spec = record.get("spec") or {}
        label = f"spec {spec.get('path', '?')}"
        if spec.get("scientific_hash"):
            label += f"  scientific hash {spec['scientific_hash'][:12]}"
        resolved = spec.get("resolved") or {}
        data = resolved.get("data") or {}
        if data:
            described = ", ".join(f"{k}={v}" for k, v in data.items() if k != "kind")
            label += f"  (data: {data.get('kind')} {described}; seed {resolved.get('seed')})"
        if label in shown:  # the same spec as a stage above: say so in one line
            label = f"spec {spec.get('path', '?')}  (as above)"
        shown.add(label)
        spec_node = node.add(label)
        for file, values in (entry.get("params") or {}).items():
            full = self.root / file
            child = spec_node.add(f"{file}")
            if not full.is_file():
                problems.append(f"{file}: spec file of {stage} is missing")
                child.ok = False
                continue
            then = flatten_metrics(values or {})
            now = flatten_metrics(load_yaml(str(full)) or {})
            changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
            for k in changed:
                problems.append(
                    f"{file}: {k} was {then.get(k, '<absent>')!r} at the run, now "
                    f"{now.get(k, '<absent>')!r} (spec edited after the run)"
                )
            if changed:
                child.ok = False
                child.label += f"  (edited: {', '.join(changed)})"
            rec = (record.get("params") or {}).get(file)
            if rec and "values" in rec:  # what the stage read vs what dvc.lock says it read
                ran = flatten_metrics(rec["values"] or {})
                relocked = sorted(k for k in set(then) | set(ran) if then.get(k) != ran.get(k))
                for k in relocked:
                    problems.append(
                        f"{file}: dvc.lock has {k}={then.get(k, '<absent>')!r} but {stage} ran "
                        f"with {ran.get(k, '<absent>')!r} (dvc.lock changed without re-running)"
                    )
                    child.ok = False
            disk = self.disk_md5(file)
            if rec and disk and rec.get("md5") != disk["md5"] and not changed:
                warnings.append(f"{file}: text changed since the run, values did not")
        if spec.get("path") and spec.get("scientific_hash"):
            from drlx.spec import SpecError, load_spec

            try:
                now_hash = load_spec(self.root / spec["path"]).scientific_hash()
            except (SpecError, OSError) as err:
                problems.append(f"{spec['path']}: no longer a valid spec ({err})")
                spec_node.ok = False
                return
            edited = any(c.ok is False for c in spec_node.children)
            if now_hash != spec["scientific_hash"] and not edited:  # edits are reported above
                warnings.append(
                    f"{spec['path']}: scientific hash {now_hash[:12]} with this drlx, "
                    f"{spec['scientific_hash'][:12]} at the run (the spec schema's defaults "
                    "changed in the code)"
                )
        spec_node.ok = spec_node.ok and all(c.ok is not False for c in spec_node.children)

    def _dataset(self, node, dataset, problems, warnings) -> None:
        path = dataset.get("path", "?")
        child = node.add(f"dataset {path}  md5 {_short(dataset.get('md5', ''))}")
        full = Path(path) if Path(path).is_absolute() else self.root / path
        if not full.exists():
            warnings.append(f"{path}: dataset not present here, cannot verify")
            child.ok = None
            return
        now = md5_path(full, self.root)["md5"]
        if now != dataset.get("md5"):
            problems.append(f"{path}: dataset replaced after the run (md5 {now} now)")
            child.ok = False

    def _environment(self, node, record, shown, warnings) -> None:
        from drlx.ledger import environment

        env = record.get("environment") or {}
        git = env.get("git") or {}
        lock = env.get("requirements_lock") or {}
        pk = env.get("packages") or {}
        dirty = {True: " (dirty: " + ", ".join(git.get("modified", [])[:5]) + ")", False: ""}
        lines = (
            f"git commit {git.get('commit', '?')}{dirty.get(git.get('dirty'), '')}",
            f"requirements.lock sha256 {lock.get('sha256', '?')[:12]}",
            f"python {env.get('python', '?')}, jax {pk.get('jax', '?')}, "
            f"equinox {pk.get('equinox', '?')}, devices {', '.join(env.get('devices', []))}",
        )
        if lines in shown:
            node.add("environment (as above)", None)
        else:
            shown.add(lines)
            env_node = node.add("environment", None)
            for line in lines:
                env_node.add(line, None)
        if not hasattr(self, "_env_now"):
            self._env_now = environment(self.root)
        now = self._env_now
        if lock.get("sha256") != now["requirements_lock"]["sha256"]:
            warnings.append(f"{record['stage']}: requirements.lock differs from the run's")
        differ = [k for k, v in pk.items() if now["packages"].get(k) != v]
        if differ:
            warnings.append(f"{record['stage']}: package versions differ from the run's: {differ}")
        conv = env.get("conv_backend")  # absent in records older than runtime.conv_backend
        if isinstance(conv, dict) and conv.get("requested") and conv.get("resolved"):
            here = _resolved_here(conv["requested"])
            if here != conv["resolved"]:
                warnings.append(
                    f"{record['stage']}: convolutions ran on {conv['resolved']} "
                    f"(conv_backend={conv['requested']}), here they would run on {here}: "
                    "results may differ at float32 rounding"
                )


def _resolved_here(requested: str) -> str:
    """The backend conv_backend=`requested` resolves to in this process ('none (why)'
    when it cannot)."""
    from drlx.ops.conv import resolve_backend

    try:
        return resolve_backend(requested)
    except (RuntimeError, ValueError) as err:
        return f"none ({err})"


def render(result: Result):
    """A rich Tree of the lineage: ✓ verified, ✗ a problem, · not verified (information or
    absent)."""
    from rich.markup import escape
    from rich.tree import Tree

    marks = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[dim]·[/dim]"}

    def build(node: Node, tree) -> None:
        for child in node.children:
            build(child, tree.add(f"{marks[child.ok]} {escape(child.label)}"))

    tree = Tree(f"{marks[result.tree.ok]} [bold]{escape(result.tree.label)}[/bold]")
    build(result.tree, tree)
    return tree
