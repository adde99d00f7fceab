"""`drlx repro`: a DVC pipeline's stages run several at a time.

`dvc repro` runs one stage after another. Most stages of the embedded pipeline keep about one
CPU core busy (a 2D toy's training: 1.1 cores on a 2-core machine), so running two independent
ones at once nearly halves their time. DVC supports this itself: it releases the repository's
lock while a stage's command runs, so separate `dvc repro` processes may reproduce different
stages concurrently (and each writes its entry of dvc.lock under the lock). What it leaves to
the caller is which stage may start when; that is this module.

The plan: the targets' stages with everything upstream (DVC's own graph); the ones to run are
those DVC reports changed, and everything downstream of them. A stage starts, as
`dvc repro --single-item STAGE` (which itself skips it if its inputs came back unchanged), once
every stage it depends on has finished; among ready stages the one on the longest remaining
path goes first, timed by the wall times that the stages' ledger records hold from the last run.
Each stage's output goes to a log file; the terminal gets one line per start and finish. After a
failure no new stage starts, running ones finish (nothing is lost), and the command fails naming
the stage and its log. After success the targets are planned again: a stage changed meanwhile
gets a second round, and one still changed after that is an error.

A stage's numbers do not depend on what runs beside it: XLA splits work by the number of
threads, not by the load (tests/test_reproducibility.py compares a parallel run with a
sequential one byte for byte).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

UNKNOWN_SECONDS = 30.0  # a stage without a ledger record from an earlier run
LOG_DIR = Path(".dvc/tmp/repro")  # DVC's own scratch folder: ignored by git and by DVC


@dataclass
class Plan:
    """Stages to run (DVC addresses), what each waits for, and its expected seconds."""

    stages: list[str]
    upstream: dict[str, set[str]] = field(default_factory=dict)  # only stages in `stages`
    seconds: dict[str, float] = field(default_factory=dict)

    def priority(self) -> dict[str, float]:
        """Expected seconds from a stage's start to the end of the longest chain below it."""
        downstream: dict[str, set[str]] = {s: set() for s in self.stages}
        for stage, ups in self.upstream.items():
            for up in ups:
                downstream[up].add(stage)
        memo: dict[str, float] = {}

        def path(stage: str) -> float:
            if stage not in memo:
                below = [path(d) for d in downstream[stage]]
                memo[stage] = self.seconds.get(stage, UNKNOWN_SECONDS) + max(below, default=0.0)
            return memo[stage]

        return {s: path(s) for s in self.stages}


def _ledger_seconds(root: Path, outs: list[str]) -> float:
    for out in outs:
        if "/ledger/" in out and out.endswith(".json"):
            try:
                return float(json.loads((root / out).read_text())["wall_time_s"])
            except (OSError, ValueError, KeyError, TypeError):
                return UNKNOWN_SECONDS
    return UNKNOWN_SECONDS


def make_plan(root: Path, targets: list[str]) -> Plan:
    """What `dvc repro TARGETS` would run (the changed stages and all below them), as a graph;
    targets as DVC reads them from the repository's root."""
    import networkx as nx
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo, repo.lock:
        stages = set()
        for target in targets:
            stages.update(repo.stage.collect(target, with_deps=True))
        graph = repo.index.graph.subgraph(stages)  # edges: stage -> a stage it depends on
        dirty = {s for s in stages if s.changed()}
        for stage in list(dirty):
            dirty.update(nx.ancestors(graph, stage))  # ancestors: the stages that depend on it
        order = [s for s in reversed(list(nx.topological_sort(graph))) if s in dirty]
        plan = Plan(stages=[s.addressing for s in order])
        for stage in order:
            ups = {u.addressing for u in graph.successors(stage) if u in dirty}
            plan.upstream[stage.addressing] = ups
            outs = [str(o.def_path) for o in stage.outs]
            plan.seconds[stage.addressing] = _ledger_seconds(root, outs)
    return plan


def _log_path(root: Path, stage: str) -> Path:
    return root / LOG_DIR / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", stage) + ".log")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_plan(
    root: Path,
    plan: Plan,
    jobs: int,
    echo: Callable[[str], None] = print,
    dvc: tuple[str, ...] = (sys.executable, "-m", "dvc"),
) -> str | None:
    """Run the plan's stages, at most `jobs` at once; returns the first failed stage, or None."""
    priority = plan.priority()
    pending = list(plan.stages)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done: set[str] = set()
    failed: str | None = None
    total = len(plan.stages)
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    try:
        while pending or running:
            while failed is None and len(running) < jobs:
                ready = [s for s in pending if plan.upstream[s] <= done]
                if not ready:
                    if not running:  # a cycle: DVC refuses those, so a bug here
                        raise RuntimeError(f"no stage of {pending} can start")
                    break
                stage = max(ready, key=lambda s: priority[s])
                pending.remove(stage)
                with _log_path(root, stage).open("w") as log:
                    cmd = [*dvc, "--wait-for-lock", "repro", "--single-item", stage]
                    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
                running[stage] = (proc, time.monotonic())
                echo(f"          start {stage}")
            if failed is not None and not running:
                break
            time.sleep(0.2)
            for stage, (proc, started) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[stage]
                seconds = time.monotonic() - started
                if code == 0:
                    done.add(stage)
                    echo(f"[{len(done):>3}/{total}] done  {stage} ({seconds:.0f} s)")
                else:
                    failed = failed or stage
                    log = _log_path(root, stage)
                    echo(
                        f"failed: {stage} (exit {code}, {seconds:.0f} s); its log, "
                        f"{log.relative_to(root)}:"
                    )
                    echo(_tail(log))
    except KeyboardInterrupt:
        # the terminal's Ctrl-C reached the stages too (one process group); let them stop
        for proc, _ in running.values():
            proc.wait()
        raise
    return failed


def reproduce(
    root: Path, targets: list[str], jobs: int, echo: Callable[[str], None] = print
) -> int:
    """`dvc repro TARGETS` with up to `jobs` stages at once; returns the exit status. Planned
    again after the run: a workspace changed meanwhile gets a second round, as a second
    `dvc repro` would give it."""
    rounds = 0
    while (plan := make_plan(root, targets)).stages:
        if rounds == 2:
            echo(f"error: still changed after two rounds: {', '.join(plan.stages)}")
            return 1
        rounds += 1
        echo(f"{len(plan.stages)} stages to run, up to {jobs} at a time; logs in {LOG_DIR}/")
        failed = run_plan(root, plan, jobs, echo)
        if failed is not None:
            echo(f"error: stage {failed} failed; the stages that finished are kept")
            return 1
    echo("Data and pipelines are up to date.")
    return 0
