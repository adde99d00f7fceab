"""What every stage does first: validate the spec (before writing anything) and compile it.

Every stage also leaves a provenance record (drlx/ledger.py) without a line of its own: the
parser returned by `parser()` arms a ledger run when the arguments are parsed, and the record is
written at exit if the stage succeeded (no uncaught exception, no invalid spec). Under `dvc repro`
the stage's inputs and outputs are its deps and outs in dvc.yaml, and the record goes to the out
named `<folder>/ledger/<stage>.json`. Run by hand, a stage writes a record only with
DRLX_LEDGER=1: arguments whose help starts with "output" are then its outputs, every other
existing path its inputs.
"""

import argparse
import atexit
import os
import sys

from drlx.builder import build
from drlx.experiment import Experiment
from drlx.ledger import StageRun
from drlx.spec import SpecError, load_spec

_run: StageRun | None = None


class _StageParser(argparse.ArgumentParser):
    """An ArgumentParser that starts the stage's ledger run once its arguments are valid."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if os.environ.get("DVC_STAGE") or os.environ.get("DRLX_LEDGER") == "1":
            argv = [sys.argv[0], *(args or sys.argv[1:])]
            _arm(StageRun(sys.argv[0], self._actions, parsed, argv))
        return parsed


def _arm(run: StageRun) -> None:
    global _run
    _run = run
    previous_hook = sys.excepthook

    def excepthook(*exc_info):
        run.fail()  # an uncaught exception: the stage failed, no record
        previous_hook(*exc_info)

    sys.excepthook = excepthook
    atexit.register(_finish, run)


def _finish(run: StageRun) -> None:
    try:
        run.finish()
    except Exception as err:  # the outputs exist but are unrecorded: fail the stage loudly
        print(f"error: the stage ran but its ledger record failed: {err!r}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


def parser(description: str) -> argparse.ArgumentParser:
    p = _StageParser(description=description)
    p.add_argument("--spec", required=True, help="experiment spec (specs/NAME.yaml)")
    return p


def load_experiment(spec_path: str) -> Experiment:
    """Load, validate and build; on an invalid spec print every problem and exit 2, having
    written nothing."""
    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        if _run is not None:
            _run.fail()
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    if _run is not None:
        _run.spec = spec
    return build(spec)


def run_reporting_bad_input(run) -> None:
    """Call a stage's `run()`; a missing or malformed input (FileNotFoundError, KeyError,
    ValueError) ends it with a one-line message instead of a traceback (no ledger record)."""
    try:
        run()
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
