"""Spec loading: the repository's specs, YAML details, located errors, extends, hashing, CLI."""

import json
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml
from helpers import FULL_SPEC, line_of, replace_once, write
from typer.testing import CliRunner

from drlx.cli import app
from drlx.spec import ExperimentSpec, SpecError, load_raw, load_spec

REPO = Path(__file__).resolve().parents[1]
REPO_SPECS = sorted((REPO / "specs").glob("*.yaml"))
BLOCKS = [
    "data",
    "diffusion",
    "model",
    "sampler",
    "objective",
    "train",
    "density",
    "evaluate",
    "runtime",
]


def test_repository_has_specs():
    assert len(REPO_SPECS) >= 1


@pytest.mark.parametrize("path", REPO_SPECS, ids=lambda p: p.name)
def test_repository_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, ExperimentSpec)
    assert len(spec.scientific_hash()) == 64


def test_full_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, "full.yaml", FULL_SPEC))
    assert spec.name == "test_spec" and spec.seed == 3
    assert spec.model.width == 32 and spec.sampler.num_steps == 30


def test_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path, "s.yaml", FULL_SPEC)
    raw, _ = load_raw(path)
    for value, expected in [
        (raw["diffusion"]["beta_start"], 1e-4),
        (raw["sampler"]["step_size_b2"], 4e-3),
        (raw["train"]["learning_rate"], 1e-3),
    ]:
        assert type(value) is float and value == expected
    # Plain YAML 1.1 reads it as a string; drlx must not change PyYAML's global SafeLoader.
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"
    # Integers stay integers.
    assert type(raw["seed"]) is int and type(raw["sampler"]["num_steps"]) is int


# ---- located errors ---------------------------------------------------------------------------
BAD_CASES = {
    # name: (old text, new text, needle on the offending line, dotted field path)
    "typo_key": ("  num_steps: 30\n", "  num_step: 30\n", "num_step:", "sampler.num_step"),
    "wrong_type": ("  width: 32", "  width: wide", "width: wide", "model.width"),
    "negative_step": (
        "step_size_b2: 4e-3",
        "step_size_b2: -1e-3",
        "step_size_b2",
        "sampler.step_size_b2",
    ),
    "unknown_kind": ("kind: drl_linear", "kind: drl_linaer", "drl_linaer", "diffusion.kind"),
    "top_level_typo": ("seed: 3", "sede: 3", "sede:", "sede"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_error_names_file_line_and_field(tmp_path, case):
    old, new, needle, field = BAD_CASES[case]
    text = replace_once(FULL_SPEC, old, new)
    path = write(tmp_path, f"{case}.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line_of(text, needle)}: {field}: "), problems
    assert problems[0] in str(info.value)


def test_every_problem_is_reported(tmp_path):
    text = replace_once(FULL_SPEC, "  width: 32", "  width: wide")
    text = replace_once(text, "step_size_b2: 4e-3", "step_size_b2: -1e-3")
    path = write(tmp_path, "two.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    got = sorted(info.value.problems)
    assert len(got) == 2
    assert got[0].startswith(f"{path}:{line_of(text, 'width:')}: model.width: ")
    assert got[1].startswith(f"{path}:{line_of(text, 'step_size_b2')}: sampler.step_size_b2: ")


def test_duplicate_key_is_located(tmp_path):
    text = replace_once(FULL_SPEC, "  depth: 2\n", "  depth: 2\n  width: 64\n")
    path = write(tmp_path, "dup.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line_of(text, 'width: 64')}: "), problem
    # SpecError's documented format is `file:line: field.path: message`.
    assert problem.startswith(f"{path}:{line_of(text, 'width: 64')}: model.width: "), problem


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    text = FULL_SPEC + "model: [unclosed\n"
    path = write(tmp_path, "broken.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems[0].startswith(f"{path}:")


# ---- extends ----------------------------------------------------------------------------------
CHILD = """\
extends: bases/base.yaml
name: child
sampler:
  num_steps: 7
"""


def test_child_overrides_base_value(tmp_path):
    write(tmp_path, "bases/base.yaml", FULL_SPEC)
    child = load_spec(write(tmp_path, "child.yaml", CHILD))
    base = load_spec(tmp_path / "bases/base.yaml")
    assert child.name == "child" and child.sampler.num_steps == 7
    # Everything else comes from the base, including siblings of the overridden key.
    assert child.sampler.step_size_b2 == base.sampler.step_size_b2 == 4e-3
    assert child.sampler.kind == "ula" and child.model == base.model and child.seed == 3
    # The merge is transparent: the same spec written out flat has the same hash.
    flat_text = replace_once(FULL_SPEC, "name: test_spec", "name: child")
    flat_text = replace_once(flat_text, "num_steps: 30", "num_steps: 7")
    flat = load_spec(write(tmp_path, "flat.yaml", flat_text))
    assert flat == child and flat.scientific_hash() == child.scientific_hash()


def test_errors_are_located_in_the_file_that_holds_them(tmp_path):
    base_text = replace_once(FULL_SPEC, "  width: 32", "  width: wide")
    base_path = write(tmp_path, "bases/base.yaml", base_text)
    child_text = replace_once(CHILD, "num_steps: 7", "num_stepz: 7")
    child_path = write(tmp_path, "child.yaml", child_text)
    with pytest.raises(SpecError) as info:
        load_spec(child_path)
    got = sorted(info.value.problems)
    expected = sorted(
        [
            f"{base_path}:{line_of(base_text, 'width:')}: model.width: ",
            f"{child_path}:{line_of(child_text, 'num_stepz')}: sampler.num_stepz: ",
        ]
    )
    assert len(got) == 2
    assert all(g.startswith(e) for g, e in zip(got, expected, strict=True)), got


def test_base_that_extends_is_rejected(tmp_path):
    write(tmp_path, "bases/root.yaml", FULL_SPEC)
    base_text = "# a base of a base\nextends: root.yaml\nseed: 4\n"
    base_path = write(tmp_path, "bases/base.yaml", base_text)
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, "child.yaml", CHILD))
    (problem,) = info.value.problems
    # located at the `extends:` line of the spec that names the base, which is named too
    assert problem.startswith(f"{tmp_path / 'child.yaml'}:{line_of(CHILD, 'extends:')}: extends: ")
    assert (
        f"{base_path} extends another spec at its line {line_of(base_text, 'extends:')}" in problem
    )


# ---- scientific hash --------------------------------------------------------------------------
def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _set(d: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(d))
    node = out
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return out


FIXED = {("diffusion", "num_diffusion_steps")}  # Literal[1000] for drl_linear


def _literal_choices(spec: ExperimentSpec, path: tuple) -> list:
    """The values a Literal-typed field allows (read off the pydantic model of its block)."""
    owner = spec
    for part in path[:-1]:
        owner = getattr(owner, part)
    annotation = type(owner).model_fields[path[-1]].annotation
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else []


# fields that are off (None) by default, and a value that turns each on
SWITCHED_ON = {
    ("initializer",): {"kind": "mlp"},
    ("train", "grad_clip"): 1.0,
    ("train", "dequantize"): 0.125,
    ("evaluate", "draw_size"): 7,
    ("sampler", "generation"): {"kind": "underdamped"},
    ("condition",): {"on": "class"},
    ("tasks",): {"num_samples": 10},
}


def _alternatives(spec, path, value):
    if value is None:
        return [SWITCHED_ON[path]] if path in SWITCHED_ON else []
    if isinstance(value, str):
        choices = _literal_choices(spec, path) or [value + "_other"]
        return [c for c in choices if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2, value // 2]
    if isinstance(value, float):
        return [value * 0.5, value * 1.5]
    if isinstance(value, list) and value:  # a tuple field: change one element, or drop one
        return [[*value[:-1], a] for a in _alternatives(spec, path, value[-1])] + [value[:-1]]
    return []


def test_hash_ignores_runtime(tmp_path):
    spec = load_spec(write(tmp_path, "a.yaml", FULL_SPEC))
    raw = spec.model_dump(mode="json")
    for path, value in [
        (("runtime", "progress"), True),
        (("runtime", "devices"), 1),
        (("runtime", "sample_batch_size"), 17),
    ]:
        other = ExperimentSpec.model_validate(_set(raw, path, value))
        assert other != spec
        assert other.scientific_hash() == spec.scientific_hash(), path


def test_hash_changes_with_every_scientific_field(tmp_path):
    spec = load_spec(write(tmp_path, "a.yaml", FULL_SPEC))
    raw = spec.model_dump(mode="json")
    base_hash = spec.scientific_hash()
    covered = set()
    for path, value in _leaves(raw):
        if path[0] == "runtime" or path[-1] == "kind" or path in FIXED:
            continue  # one variant per block in this spec; other kinds change whole blocks
        for alt in _alternatives(spec, path, value):
            try:
                other = ExperimentSpec.model_validate(_set(raw, path, alt))
            except ValueError:
                continue
            assert other.scientific_hash() != base_hash, (path, value, alt)
            covered.add(path)
            break
        else:
            pytest.fail(f"no valid alternative value for {path} = {value!r}")
    # Every field but the runtime block was exercised, whatever scientific_dict() returns.
    assert {p[0] for p in covered} == set(ExperimentSpec.model_fields) - {"runtime"}
    # A different kind of a block changes it too.
    cosine = {"kind": "cosine_logsnr", "num_levels": 6}
    assert (
        ExperimentSpec.model_validate({**raw, "diffusion": cosine}).scientific_hash() != base_hash
    )


def test_hash_ignores_formatting_and_key_order(tmp_path):
    a = load_spec(write(tmp_path, "a.yaml", FULL_SPEC))
    lines = FULL_SPEC.split("\n")
    # Move `seed` to the end and add a comment and a blank line.
    text = "\n".join(line for line in lines if not line.startswith("seed")) + "\n# end\n\nseed: 3\n"
    b = load_spec(write(tmp_path, "b.yaml", text))
    assert a.scientific_hash() == b.scientific_hash()


# ---- command line -----------------------------------------------------------------------------
runner = CliRunner()


def test_cli_validate_good_specs():
    result = runner.invoke(app, ["validate", *map(str, REPO_SPECS)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(REPO_SPECS)
    for path, line in zip(REPO_SPECS, lines, strict=True):
        assert line.startswith(f"{path}: ok"), line


def test_cli_validate_bad_spec(tmp_path):
    text = replace_once(FULL_SPEC, "step_size_b2: 4e-3", "step_size_b2: -1e-3")
    bad = write(tmp_path, "bad.yaml", text)
    good = write(tmp_path, "good.yaml", FULL_SPEC)
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code != 0
    assert f"{good}: ok" in result.output
    assert f"{bad}:{line_of(text, 'step_size_b2')}: sampler.step_size_b2:" in result.output
    assert f"{bad}: ok" not in result.output


def test_cli_schema(tmp_path):
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert set(BLOCKS) <= set(schema["properties"])
    assert set(BLOCKS) <= set(ExperimentSpec.model_fields)
    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_training_hash_ignores_what_training_does_not_read(tmp_path):
    spec = load_spec(write(tmp_path, "a.yaml", FULL_SPEC))
    raw = spec.model_dump(mode="json")
    for path, value in [
        (("density", "num_chains"), 3),
        (("evaluate", "num_samples"), 7),
        (("runtime", "devices"), 1),
    ]:
        other = ExperimentSpec.model_validate(_set(raw, path, value))
        assert other.scientific_hash() != spec.scientific_hash() or path[0] == "runtime"
        assert other.training_hash() == spec.training_hash(), path
    for path, value in [(("train", "num_steps"), 11), (("sampler", "num_steps"), 2), ("seed", 5)]:
        path = path if isinstance(path, tuple) else (path,)
        other = ExperimentSpec.model_validate(_set(raw, path, value))
        assert other.training_hash() != spec.training_hash(), path
