"""What every stage does first: validate the spec (before writing anything) and compile it.

Every stage also leaves a provenance record (drlx/ledger.py) without a line of its own: the
parser returned by `parser()` arms a ledger run when the arguments are parsed, and the record is
written at exit if the stage succeeded (no uncaught exception, no invalid spec). Under `dvc repro`
the stage's inputs and outputs are its deps and outs in dvc.yaml, and the record goes to the out
named `<folder>/ledger/<stage>.json`. Run by hand, a stage writes a record only with
DRLX_LEDGER=1: arguments whose help starts with "output" are then its outputs, every other
existing path its inputs.

A stage's `if __name__ == "__main__":` runs its `main` through `run_stage`: a known failure
(drlx.errors.DrlxError: an invalid spec, a missing or unreadable input, a diverged run) prints
`error: <message>` on stderr and exits 2 without a traceback; anything else is a bug and keeps
its traceback (exit 1). Either way no ledger record is written, and outputs, written through
drlx.io's atomic writes, are either complete or absent.
"""

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from drlx.builder import build
from drlx.errors import (
    DrlxError,
    InputError,
    InputNotFoundError,
    MissingArraysError,
    exit_known_failure,
)
from drlx.experiment import Experiment
from drlx.ledger import StageRun
from drlx.spec import load_spec

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
    """Load, validate and build. An invalid spec raises SpecError (a DrlxError: `run_stage`
    prints every problem and exits 2) before the stage has written anything."""
    spec = load_spec(spec_path)
    if _run is not None:
        _run.spec = spec
    return build(spec)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main()`. A known failure (DrlxError) fails the ledger run, prints
    `error: <message>` (each line of it) on stderr and exits 2 (drlx.errors.EXIT_KNOWN_FAILURE),
    without a traceback; any other exception propagates with its traceback."""
    try:
        main()
    except DrlxError as err:
        if _run is not None:
            _run.fail()
        raise exit_known_failure(err) from None


@contextlib.contextmanager
def input_checks(*types: type[Exception]) -> Iterator[None]:
    """Around a call that validates an input with built-in exceptions (e.g. drlx.evaluate's
    loaders): an exception of `types` raised in the block is a known failure, re-raised with
    its message as InputNotFoundError (FileNotFoundError), MissingArraysError (KeyError) or
    InputError (anything else). Keep the block to the validating call, so a bug elsewhere
    keeps its traceback."""
    try:
        yield
    except DrlxError:
        raise
    except types as err:
        message = str(err.args[0]) if len(err.args) == 1 else str(err)
        if isinstance(err, FileNotFoundError):
            raise InputNotFoundError(message) from None
        if isinstance(err, KeyError):
            raise MissingArraysError(message) from None
        raise InputError(message) from None
