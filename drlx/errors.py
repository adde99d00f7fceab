"""Known failures: the errors whose message is the whole story.

An invalid spec, a missing or malformed input file (dataset, model, checkpoint folder, arrays
of an earlier stage) and a diverged training run are failures the user fixes by reading the
message; stages and the `drlx` command print it as `error: <message>` without a traceback and
exit 2 (`run_stage` in stages/common.py, `drlx.cli`). Every other exception is a bug and keeps
its traceback.

Each known failure derives from `DrlxError` and from the built-in type it always was
(`SpecError` is a ValueError, `NonFiniteLossError` a FloatingPointError, ...), so code that
catches the built-in type still does. This module imports only `sys`: any module may use it.
"""

import sys

# the exit code of a known failure (1 stays an unexpected error's, with its traceback)
EXIT_KNOWN_FAILURE = 2


class DrlxError(Exception):
    """A known failure: the message names what went wrong and how to fix it."""

    def __str__(self) -> str:
        # KeyError's own __str__ would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(DrlxError, ValueError):
    """An input file is there but unusable: malformed, truncated, or written for another spec."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file is missing: the message names it and what writes it."""


class MissingArraysError(DrlxError, KeyError):
    """An .npz file lacks arrays a stage needs: the message names the file and the arrays."""


class CheckpointError(DrlxError):
    """The checkpoint folder cannot be used (not a folder, not writable)."""


def exit_known_failure(err: DrlxError) -> SystemExit:
    """Print a known failure as `error: <line>` (each line of its message) on stderr and return
    the SystemExit to raise (`raise exit_known_failure(err) from None`: no traceback)."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(f"error: {line}", file=sys.stderr)
    sys.stderr.flush()
    return SystemExit(EXIT_KNOWN_FAILURE)
