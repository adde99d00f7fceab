"""`drlx repro`'s scheduler (drlx/repro.py) on a stand-in for `dvc repro --single-item STAGE`
that records when each stage starts and ends: a stage starts only after the stages it depends
on, never more than `jobs` at once, independent ones overlap, the longest remaining path goes
first, and after a failure nothing new starts while running stages finish. DVC's side (which
stages are changed, dvc.lock written by concurrent processes, the same bytes as `dvc repro`) is
tested on a real pipeline in tests/test_reproducibility.py."""

import sys
from pathlib import Path

from drlx.repro import Plan, run_plan

# argv: --wait-for-lock repro --single-item STAGE; env-free: its settings are in the file names
FAKE_DVC = """\
import sys, time
from pathlib import Path
stage = sys.argv[-1]
here = Path.cwd()
seconds = float((here / f"{stage}.seconds").read_text())
with open(here / "events.txt", "a") as f:
    f.write(f"{time.monotonic()} start {stage}\\n")
time.sleep(seconds)
with open(here / "events.txt", "a") as f:
    f.write(f"{time.monotonic()} end {stage}\\n")
sys.exit(3 if (here / f"{stage}.fail").exists() else 0)
"""


def _run(tmp_path: Path, plan: Plan, jobs: int, seconds: dict, fail=()) -> tuple:
    fake = tmp_path / "fake_dvc.py"
    fake.write_text(FAKE_DVC)
    for stage in plan.stages:
        (tmp_path / f"{stage}.seconds").write_text(str(seconds[stage]))
        if stage in fail:
            (tmp_path / f"{stage}.fail").write_text("")
    lines = []
    failed = run_plan(tmp_path, plan, jobs, lines.append, dvc=(sys.executable, str(fake)))
    events = []
    for line in (tmp_path / "events.txt").read_text().splitlines():
        t, kind, stage = line.split()
        events.append((float(t), kind, stage))
    return failed, sorted(events), lines


def _intervals(events) -> dict[str, tuple[float, float]]:
    start = {s: t for t, k, s in events if k == "start"}
    return {s: (start[s], t) for t, k, s in events if k == "end"}


# a -> b -> c (a long chain) and d, e independent of it; f needs c and d
DIAMOND = Plan(
    stages=["a", "d", "e", "b", "c", "f"],
    upstream={"a": set(), "b": {"a"}, "c": {"b"}, "d": set(), "e": set(), "f": {"c", "d"}},
    seconds={"a": 5, "b": 5, "c": 5, "d": 1, "e": 1, "f": 1},  # what the ledger said
)
SLEEP = {"a": 0.6, "b": 0.6, "c": 0.6, "d": 0.3, "e": 0.3, "f": 0.2}


def test_stages_wait_for_their_inputs_and_run_two_at_a_time(tmp_path):
    failed, events, lines = _run(tmp_path, DIAMOND, 2, SLEEP)
    assert failed is None
    spans = _intervals(events)
    assert set(spans) == set(DIAMOND.stages)  # each ran once
    for stage, ups in DIAMOND.upstream.items():
        for up in ups:
            assert spans[up][1] <= spans[stage][0], (up, stage)
    # at most two at once, and two at once while the long chain runs (d and e beside it)
    live, peak = 0, 0
    for _, kind, _ in events:
        live += 1 if kind == "start" else -1
        peak = max(peak, live)
    assert peak == 2
    # the longest remaining path first: a (15 s to the end), then d (2 s: d, f), then e (1 s)
    starts = [line.split()[-1] for line in lines if " start " in line]
    assert starts[:3] == ["a", "d", "e"]
    assert sum(1 for line in lines if " done " in line) == 6


def test_one_job_runs_one_stage_at_a_time(tmp_path):
    failed, events, _ = _run(tmp_path, DIAMOND, 1, SLEEP)
    assert failed is None
    kinds = [k for _, k, _ in events]
    assert kinds == ["start", "end"] * 6


def test_after_a_failure_nothing_starts_and_running_stages_finish(tmp_path):
    # d fails quickly while a runs: a finishes; b, c, e, f never start
    sleep = {**SLEEP, "a": 1.0, "d": 0.1}
    plan = Plan(stages=["a", "d", "b", "c", "e", "f"], upstream=DIAMOND.upstream,
                seconds={**DIAMOND.seconds, "e": 0.5})  # fmt: skip
    failed, events, lines = _run(tmp_path, plan, 2, sleep, fail={"d"})
    assert failed == "d"
    spans = _intervals(events)
    assert set(spans) == {"a", "d"}  # a was running: it finished; nothing else started
    assert any(line.startswith("failed: d (exit 3") for line in lines)
