"""The spec language: pydantic models of an experiment, YAML loading, and the one place that
turns a spec into objects (build.py)."""

from drlx.spec.experiment import ExperimentSpec
from drlx.spec.load import SpecError, load_raw, load_spec

__all__ = ["ExperimentSpec", "SpecError", "load_raw", "load_spec"]
