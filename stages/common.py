"""What every stage does first: validate the spec (before writing anything) and compile it."""

import argparse
import sys

from drlx.spec import SpecError, load_spec
from drlx.spec.build import Experiment, build


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--spec", required=True, help="experiment spec (specs/NAME.yaml)")
    return p


def load_experiment(spec_path: str) -> Experiment:
    """Load, validate and build; on an invalid spec print every problem and exit 2, having
    written nothing."""
    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    return build(spec)
