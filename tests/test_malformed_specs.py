"""Malformed specs: each is refused with a SpecError naming the file, the line and the field,
never accepted by converting the value and never a traceback. Most cases call load_spec (what
`drlx validate` calls); a handful run `drlx validate` itself in a subprocess."""

import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import FULL_SPEC, line_of, replace_once, write

from drlx.spec import ExperimentSpec, SpecError, load_spec
from drlx.spec.load import MAX_FILE_BYTES, MAX_NESTING, MAX_VALUES

DRLX = Path(sys.executable).parent / "drlx"  # the console script of this environment
DIFFUSION = "  kind: drl_linear\n  num_levels: 6\n  beta_start: 1e-4\n  beta_end: 0.02\n"
MODEL = "  kind: mlp\n  width: 32\n  depth: 2\n"
SAMPLER = "  kind: ula\n  num_steps: 30\n  step_size_b2: 4e-3\n"
DATA = "  kind: toy2d\n  name: eight_gaussians\n  num_train: 1000\n  num_heldout: 100\n"
TRAIN = "  num_steps: 100\n"
CHILD = "# a child spec\nextends: bases/base.yaml\nname: child\nsampler:\n  num_steps: 7\n"


@dataclass(frozen=True)
class Bad:
    """A malformed spec and where its problem must be reported.

    text: the spec file's content. at: the offending line, as a line number or a needle found
    on exactly one line of `text` (of the file named by `in_file`, if given). field: the dotted
    field path the message names, None for a problem of the file itself (encoding, YAML).
    says: a fragment the message must hold. files: other files (name, content) next to it.
    in_file: the file the location points at, relative to the spec's folder (default: the
    spec).
    """

    text: str | bytes
    at: str | int
    field: str | None
    says: str = ""
    files: tuple = ()
    in_file: str | None = None


def sub(old: str, new: str, field: str | None, says: str = "", at: str | None = None) -> Bad:
    """FULL_SPEC with `old` replaced by `new`; the problem is on the last line of `new`."""
    return Bad(replace_once(FULL_SPEC, old, new), at or new.strip().splitlines()[-1], field, says)


def add(block: str, field: str | None, says: str = "", at: str | None = None) -> Bad:
    """FULL_SPEC with `block` appended; the problem is on `block`'s last line."""
    return Bad(FULL_SPEC + block, at or block.strip().splitlines()[-1], field, says)


def child(field: str | None, says: str, base: str | bytes, at="extends:", in_file=None) -> Bad:
    """CHILD (which extends bases/base.yaml) with `base` as its base."""
    return Bad(CHILD, at, field, says, (("bases/base.yaml", base),), in_file)


def nested(depth: int) -> str:
    """A block mapping `depth` levels deep below the top level: k0: / k1: / ... / value."""
    lines = [f"{'  ' * i}k{i}:" for i in range(depth)]
    return "\n".join(lines) + " 1\n"


LONG_INT = "9" * 5000  # more digits than Python turns into an int (4300)
BOMB = "".join(  # each level holds 9 copies of the one before: 9^7 values
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
)

CASES = {
    # ---- a boolean where an integer or float belongs ----
    "bool_width": sub("  width: 32", "  width: true", "model.width", "boolean"),
    "bool_seed": sub("seed: 3", "seed: true", "seed", "valid integer"),
    "bool_yes_num_steps": sub("num_steps: 30", "num_steps: yes", "sampler.num_steps", "boolean"),
    "bool_batch_size": sub(
        "  num_steps: 100", "  batch_size: false", "train.batch_size", "boolean"
    ),
    "bool_num_train": sub("num_train: 1000", "num_train: on", "data.num_train", "boolean"),
    "bool_num_chains": add("density:\n  num_chains: true\n", "density.num_chains", "boolean"),
    "bool_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: true", "train.learning_rate", "boolean"
    ),
    "bool_devices": add("  devices: true\n", "runtime.devices", "boolean"),
    "bool_list_item": add(
        "density:\n  long_run_levels: [true]\n", "density.long_run_levels.0", "boolean"
    ),
    # ---- a string where a number belongs ----
    "str_width": sub("  width: 32", "  width: '32'", "model.width", "string"),
    "str_seed": sub("seed: 3", 'seed: "3"', "seed", "valid integer"),
    "str_num_steps": sub("num_steps: 30", 'num_steps: "30"', "sampler.num_steps", "a string"),
    "str_num_heldout": sub("num_heldout: 100", "num_heldout: '100'", "data.num_heldout", "'100'"),
    "str_devices": add("  devices: '2'\n", "runtime.devices", "'2'"),
    "str_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: '1e-3'", "train.learning_rate", "a string"
    ),
    "str_step_size": sub(
        "step_size_b2: 4e-3", 'step_size_b2: "4e-3"', "sampler.step_size_b2", "a string"
    ),
    "str_beta_end": sub("beta_end: 0.02", "beta_end: '0.02'", "diffusion.beta_end", "number"),
    "str_nan": sub("learning_rate: 1e-3", "learning_rate: nan", "train.learning_rate", "a string"),
    "str_as_bool": sub("progress: false", "progress: 'false'", "runtime.progress", "boolean"),
    "int_as_bool": sub("progress: false", "progress: 0", "runtime.progress", "boolean"),
    "str_as_shared_noise": sub(
        "num_levels: 6", 'shared_noise: "true"', "diffusion.shared_noise", "true or false"
    ),
    # YAML 1.1 reads these as 8, 100 and 32; drlx takes integers in decimal only
    "octal_depth": sub("depth: 2", "depth: 010", "model.depth", "'010'"),
    "sexagesimal_steps": sub("num_steps: 100", "num_steps: 1:40", "train.num_steps", "'1:40'"),
    "hex_width": sub("  width: 32", "  width: 0x20", "model.width", "'0x20'"),
    # ---- a float where an integer belongs ----
    "float_width": sub("  width: 32", "  width: 32.0", "model.width", "32.0"),
    "float_exp_num_steps": sub("num_steps: 100", "num_steps: 1e2", "train.num_steps", "100.0"),
    "float_frac_num_steps": sub("num_steps: 30", "num_steps: 30.5", "sampler.num_steps", "a float"),
    "float_num_samples": add("evaluate:\n  num_samples: 2.0e3\n", "evaluate.num_samples", "2000.0"),
    "float_shape": sub(
        DATA,
        "  kind: npz\n  path: x.npz\n  shape: [8, 8.0, 3]\n",
        "data.shape.1",
        "a float",
        at="shape",
    ),
    # ---- not finite: NaN, infinity, overflow ----
    "nan_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: .nan", "train.learning_rate", "finite"
    ),
    "inf_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: .inf", "train.learning_rate", "finite"
    ),
    "nan_step_size": sub(
        "step_size_b2: 4e-3", "step_size_b2: .NaN", "sampler.step_size_b2", "finite"
    ),
    "minus_inf_beta": sub(
        "beta_start: 1e-4", "beta_start: -.inf", "diffusion.beta_start", "finite"
    ),
    "inf_logsnr_max": sub(
        DIFFUSION, "  kind: cosine_logsnr\n  logsnr_max: .inf\n", "diffusion.logsnr_max", "finite"
    ),
    "nan_grad_clip": sub(
        TRAIN, f"{TRAIN}  grad_clip: .nan\n", "train.grad_clip", "finite", at="grad_clip"
    ),
    "inf_friction": sub(
        SAMPLER, "  kind: underdamped\n  friction: .Inf\n", "sampler.friction", "finite"
    ),
    "overflow_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: 1e400", "train.learning_rate", "finite"
    ),
    "overflow_logsnr_min": sub(
        DIFFUSION, "  kind: cosine_logsnr\n  logsnr_min: -1e999\n", "diffusion.logsnr_min", "finite"
    ),
    "overflow_int_digits": sub("  width: 32", f"  width: {LONG_INT}", "model.width", "cannot read"),
    "overflow_seed": sub("seed: 3", "seed: 99999999999999999999999", "seed", "less than or equal"),
    # ---- sizes that would exhaust memory or never finish ----
    "huge_width": sub("  width: 32", "  width: 1000000000000", "model.width", "less than or equal"),
    "huge_num_train": sub(
        "num_train: 1000", "num_train: 10000000000", "data.num_train", "10000000"
    ),
    "huge_train_steps": sub(
        "num_steps: 100", "num_steps: 1000000000000", "train.num_steps", "100000000"
    ),
    "huge_batch_size": sub(
        TRAIN, f"{TRAIN}  batch_size: 1000000000\n", "train.batch_size", "1048576", at="batch"
    ),
    "huge_chain_steps": sub(
        "num_steps: 30", "num_steps: 1000000000", "sampler.num_steps", "1000000"
    ),
    "huge_num_samples": add(
        "evaluate:\n  num_samples: 1000000000000\n", "evaluate.num_samples", "10000000"
    ),
    "huge_sample_batch": add(
        "  sample_batch_size: 10000000000\n", "runtime.sample_batch_size", "1048576"
    ),
    "huge_quadrature": add(
        "density:\n  quadrature_resolution: 100000\n", "density.quadrature_resolution", "4096"
    ),
    "huge_num_levels": sub(
        DIFFUSION, "  kind: cosine_logsnr\n  num_levels: 1000000\n", "diffusion.num_levels", "10000"
    ),
    "huge_depth": sub("depth: 2", "depth: 100000", "model.depth", "256"),
    "huge_image_size": sub(
        DATA, "  kind: image_folder\n  path: imgs\n  size: 100000\n", "data.size", "1024"
    ),
    "huge_name": sub("name: test_spec", f"name: {'a' * 300}", "name", "at most 128"),
    "huge_channel_mults": sub(
        MODEL,
        "  kind: resnet\n  channel_mults: [1, 2, 1000]\n",
        "model.channel_mults.2",
        "64",
        at="channel_mults",
    ),
    # ---- negative or zero where a positive value belongs ----
    "negative_seed": sub("seed: 3", "seed: -1", "seed", "greater than or equal"),
    "zero_width": sub("  width: 32", "  width: 0", "model.width", "greater than 0"),
    "negative_batch": sub(
        TRAIN, f"{TRAIN}  batch_size: -256\n", "train.batch_size", "greater than 0", at="batch"
    ),
    "zero_learning_rate": sub(
        "learning_rate: 1e-3", "learning_rate: 0", "train.learning_rate", "greater than 0"
    ),
    "negative_checkpoint": add(
        "  checkpoint_every: -5\n", "runtime.checkpoint_every", "greater than or equal to 0"
    ),
    "zero_draw_size": add("evaluate:\n  draw_size: 0\n", "evaluate.draw_size", "greater than 0"),
    "empty_channel_mults": sub(
        MODEL,
        "  kind: resnet\n  channel_mults: []\n",
        "model.channel_mults",
        "at least 1",
        at="channel_mults",
    ),
    "empty_path": sub(
        DATA,
        "  kind: npz\n  path: ''\n  shape: [8, 8, 3]\n",
        "data.path",
        "at least 1 character",
        at="path",
    ),
    # ---- unknown keys (typos), in every block ----
    "typo_top_level": sub("seed: 3", "sede: 3", "sede", "unknown field"),
    "typo_data": sub("num_train: 1000", "num_trian: 1000", "data.num_trian", "unknown field"),
    "typo_diffusion": sub("num_levels: 6", "num_level: 6", "diffusion.num_level", "unknown field"),
    "typo_model": sub("  width: 32", "  widht: 32", "model.widht", "unknown field"),
    "typo_sampler": sub("num_steps: 30", "num_step: 30", "sampler.num_step", "unknown field"),
    "typo_objective": sub(
        "weighting: drl", "weigthing: drl", "objective.weigthing", "unknown field"
    ),
    "typo_train": sub(
        "learning_rate: 1e-3", "learning_rat: 1e-3", "train.learning_rat", "unknown field"
    ),
    "typo_density": add("density:\n  num_chain: 4\n", "density.num_chain", "unknown field"),
    "typo_evaluate": add("evaluate:\n  num_sample: 4\n", "evaluate.num_sample", "unknown field"),
    "typo_runtime": sub("progress: false", "progres: false", "runtime.progres", "unknown field"),
    "typo_initializer": add(
        "initializer:\n  kind: mlp\n  widht: 8\n", "initializer.widht", "unknown field"
    ),
    "typo_generation": sub(
        SAMPLER,
        SAMPLER + "  generation: {kind: underdamped, fricton: 0.3}\n",
        "sampler.generation.fricton",
        "unknown field",
        at="generation:",
    ),
    # ---- kinds: unknown, of the wrong type, missing ----
    "kind_misspelt": sub("kind: drl_linear", "kind: drl_linaer", "diffusion.kind", "expected kind"),
    "kind_int": sub("kind: mlp", "kind: 3", "model.kind", "expected kind"),
    "kind_list": sub("kind: toy2d", "kind: [toy2d]", "data.kind", "expected kind"),
    "kind_missing": sub(
        SAMPLER,
        "  num_steps: 30\n  step_size_b2: 4e-3\n",
        "sampler.kind",
        "required field is missing",
        at="sampler:",
    ),
    "kind_generation": sub(
        SAMPLER,
        SAMPLER + "  generation: {kind: ulaa}\n",
        "sampler.generation.kind",
        "expected kind",
        at="generation",
    ),
    "kind_field_of_other_kind": sub(
        SAMPLER, "  kind: mala\n  friction: 0.3\n", "sampler.friction", "unknown", at="friction"
    ),
    # ---- wrong types for lists and blocks ----
    "list_is_scalar": add("density:\n  long_run_levels: 0\n", "density.long_run_levels", "tuple"),
    "list_item_str": add(
        "density:\n  long_run_horizons: [50, '100']\n", "density.long_run_horizons.1", "a string"
    ),
    "list_is_str": sub(
        MODEL, "  kind: resnet\n  channel_mults: 1, 2\n", "model.channel_mults", at="channel_mults"
    ),
    "list_too_short": sub(
        DATA,
        "  kind: npz\n  path: x.npz\n  shape: [8, 8]\n",
        "data.shape.2",
        "too short",
        at="shape",
    ),
    "list_is_mapping": add(
        "density:\n  long_run_levels: {0: 1}\n", "density.long_run_levels", "tuple"
    ),
    "block_is_list": sub(MODEL, "  - mlp\n", "model", "found ['mlp']", at="model:"),
    "block_is_scalar": sub(
        "objective:\n  weighting: drl\n", "objective: drl\n", "objective", "found 'drl'"
    ),
    "str_is_list": sub("name: test_spec", "name: [a, b]", "name", "string"),
    # ---- YAML that does not parse ----
    "yaml_unclosed": add("evaluate: [unclosed\n", None, "not valid YAML"),
    "yaml_colon": sub("  width: 32", "  width: 32: 5", None, "not valid YAML"),
    "yaml_tab": sub("  width: 32", "\twidth: 32", None, "not valid YAML", at="width"),
    "yaml_two_documents": add("---\nname: other\n", None, "single document", at="---"),
    "yaml_nul": Bad(FULL_SPEC.replace("depth: 2", "depth: 2\x00"), "depth", None, "U+0000"),
    "yaml_duplicate": sub(
        "depth: 2\n", "depth: 2\n  depth: 3\n", "model.depth", "duplicate", at="depth: 3"
    ),
    # ---- tags: only YAML's plain types ----
    "tag_python_object": sub(
        "  width: 32", "  width: !!python/object:os.system 32", "model.width", "!!python/object"
    ),
    "tag_python_name": sub(
        "name: test_spec", "name: !!python/name:os.system ''", "name", "!!python/name"
    ),
    "tag_local_mapping": sub("model:\n", "model: !foo\n", "model", "!foo"),
    "tag_local_scalar": sub("seed: 3", "seed: !seed 3", "seed", "!seed"),
    "tag_binary": sub("name: test_spec", "name: !!binary dGVzdA==", "name", "!!binary"),
    "tag_set": sub(
        "objective:\n  weighting: drl\n", "objective: !!set {drl}\n", "objective", "!!set"
    ),
    "tag_omap": sub(
        "objective:\n  weighting: drl\n",
        "objective: !!omap [weighting: drl]\n",
        "objective",
        "!!omap",
    ),
    "tag_timestamp": sub("name: test_spec", "name: 2024-01-01", "name", "!!timestamp"),
    "tag_on_key": sub("  width: 32", "  !foo width: 32", "model", "!foo"),
    "tag_int_of_garbage": sub("  width: 32", "  width: !!int thirty", "model.width", "cannot read"),
    "tag_bool_of_garbage": sub(
        "progress: false", "progress: !!bool maybe", "runtime.progress", "cannot read"
    ),
    "merge_key": sub("  num_steps: 100\n", "  <<: {num_steps: 100}\n", "train", "merge keys"),
    "complex_key": sub("seed: 3", "? [seed]\n: 3", None, "plain name", at="? [seed]"),
    # ---- nesting: deep, recursive, exploding ----
    "deep_flow_lists": add(f"evaluate: {'[' * 10_000}{']' * 10_000}\n", None, "nested deeper"),
    "deep_flow_mappings": add(f"evaluate: {'{a: ' * 2000}1{'}' * 2000}\n", None, "nested deeper"),
    "deep_block_mappings": Bad(nested(60), f"k{MAX_NESTING}:", None, "nested deeper"),
    "recursive_alias": add("evaluate: &loop [*loop]\n", "evaluate", "nested deeper"),
    "alias_bomb": Bad("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + BOMB, "f: &f", "f", str(MAX_VALUES)),
    # ---- bytes that are not UTF-8 text ----
    "latin1": Bad(FULL_SPEC.replace("test_spec", "t\xe9st").encode("latin-1"), 1, None, "0xe9"),
    "latin1_later_line": Bad(
        FULL_SPEC.replace("eight_gaussians", "\xe9").encode("latin-1"), 5, None, "UTF-8"
    ),
    "utf16": Bad(FULL_SPEC.encode("utf-16"), 1, None, "not UTF-8"),
    "binary_file": Bad(bytes(range(256)) * 8, 2, None, "0x80"),
    "png_header": Bad(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, None, "0x89"),
    # ---- not a mapping of blocks ----
    "empty_file": Bad("", 1, None, "holds no YAML"),
    "only_comments": Bad("# nothing here\n\n# still nothing\n", 1, None, "holds no YAML"),
    "top_level_list": Bad("\n- name: x\n- seed: 3\n", 2, None, "found a list"),
    "top_level_scalar": Bad("just words\n", 1, None, "found a scalar"),
    "top_level_null": Bad("~\n", 1, None, "found a scalar"),
    "too_large": Bad(FULL_SPEC + "#" * MAX_FILE_BYTES + "\n", 1, None, "larger than"),
    # ---- extends ----
    "extends_missing": Bad(CHILD, "extends:", "extends", "not found"),
    "extends_int": Bad(CHILD.replace("bases/base.yaml", "3"), "extends:", "extends", "found 3"),
    "extends_null": Bad(CHILD.replace(" bases/base.yaml", ""), "extends:", "extends", "None"),
    "extends_list": Bad(
        CHILD.replace("bases/base.yaml", "[a, b]"), "extends:", "extends", "found ['a', 'b']"
    ),
    "extends_empty": Bad(CHILD.replace("bases/base.yaml", "''"), "extends:", "extends", "found ''"),
    "extends_folder": Bad(
        CHILD.replace("bases/base.yaml", "bases"),
        "extends:",
        "extends",
        "not found",
        (("bases/x.yaml", "seed: 1\n"),),
    ),
    "extends_base_is_list": child("extends", "found a list", "- 1\n- 2\n"),
    "extends_base_empty": child("extends", "holds no YAML", ""),
    "extends_base_not_utf8": child("extends", "not UTF-8", b"seed: 3\nname: \xff\n"),
    "extends_base_bad_yaml": child("extends", "not valid YAML", "model: [unclosed\n"),
    "extends_base_python_tag": child("extends", "!!python/object", "seed: !!python/object:x {}\n"),
    "extends_base_deep": child("extends", "nested deeper", f"evaluate: {'[' * 5000}{']' * 5000}\n"),
    "extends_chain": child("extends", "extends another spec", "extends: root.yaml\nseed: 4\n"),
    "extends_cycle": child("extends", "cycle", "extends: ../{spec}\nseed: 4\n"),
    "extends_self": Bad("name: x\nextends: {spec}\n", "extends:", "extends", "cycle"),
    # a bad value in the base is reported at its own line, naming the spec that extends it
    "extends_base_bad_value": child(
        "model.width",
        "(via {child}:2 extends)",
        FULL_SPEC.replace("width: 32", "width: true"),
        at="width: true",
        in_file="bases/base.yaml",
    ),
    "extends_base_typo": child(
        "model.widht",
        "(via {child}:2 extends)",
        FULL_SPEC.replace("width: 32", "widht: 32"),
        at="widht",
        in_file="bases/base.yaml",
    ),
}


def _write_case(tmp_path: Path, case: str, bad: Bad) -> Path:
    """Write the case's spec (and its other files); `{spec}` in any of them is the spec's name."""
    path = tmp_path / f"{case}.yaml"
    for name, content in ((path.name, bad.text), *bad.files):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content.replace("{spec}", path.name))
    return path


def _expected(tmp_path: Path, path: Path, bad: Bad) -> tuple[str, str]:
    """The `file:line: field: ` a problem must start with, and the fragment it must hold."""
    where = tmp_path / bad.in_file if bad.in_file else path
    if isinstance(bad.at, int):
        line = bad.at
    else:
        line = line_of(where.read_text(encoding="utf-8", errors="replace"), bad.at)
    prefix = f"{where}:{line}: " + (f"{bad.field}: " if bad.field else "")
    return prefix, bad.says.replace("{child}", str(path))


@pytest.mark.parametrize("case", CASES)
def test_malformed_spec_is_refused_at_its_line(tmp_path, case):
    bad = CASES[case]
    path = _write_case(tmp_path, case, bad)
    prefix, says = _expected(tmp_path, path, bad)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith(prefix), (prefix, problem)
    assert says in problem, (says, problem)
    if bad.field is None:  # a problem of the file: no field path between the line and the text
        assert not problem[len(prefix) :].split(" ")[0].endswith(":"), problem


@pytest.mark.parametrize(
    "name, says",
    [("folder", "not found"), ("x" * 5000, "cannot read"), ("missing.yaml", "not found")],
    ids=["folder", "name_too_long", "missing"],
)
def test_paths_that_are_not_readable_files(tmp_path, name, says):
    (tmp_path / "folder").mkdir()
    path = tmp_path / name
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:1: ") and says in problem, problem


def test_there_are_enough_cases():
    assert len(CASES) >= 60


# a handful through `drlx validate` itself: exit status 1, the located line, no traceback
CLI_CASES = [
    "bool_width",
    "str_learning_rate",
    "deep_flow_lists",
    "binary_file",
    "tag_python_object",
    "extends_base_not_utf8",
    "empty_file",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_validate_refuses_without_traceback(tmp_path, case):
    bad = CASES[case]
    path = _write_case(tmp_path, case, bad)
    prefix, says = _expected(tmp_path, path, bad)
    good = write(tmp_path, "good.yaml", FULL_SPEC)
    result = subprocess.run(
        [str(DRLX), "validate", str(good), str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{good}: ok"), lines
    assert lines[1].startswith(prefix) and says in lines[1], lines
    assert len(lines) == 2, lines


# ---- what strictness must not refuse ------------------------------------------------------------
GOOD = {
    # floats written without a dot, with a capital E, or as ints; ints with underscores
    "exponents": [
        ("learning_rate: 1e-3", "learning_rate: 1E-3"),
        ("beta_end: 0.02", "beta_end: 2e-2"),
    ],
    "int_for_float": [
        ("learning_rate: 1e-3", "learning_rate: 1"),
        ("step_size_b2: 4e-3", "step_size_b2: 1"),
    ],
    "underscores": [("num_train: 1000", "num_train: 1_000")],
    # YAML's own spellings of booleans
    "yaml_booleans": [("progress: false", "progress: no")],
    # lists for every tuple field
    "resnet_lists": [(MODEL, "  kind: resnet\n  channel_mults: [1, 2]\n")],
    "npz_list": [(DATA, "  kind: npz\n  path: x.npz\n  shape: [8, 8, 3]\n")],
    # sizes at their caps are not allocated when a spec is read
    "at_the_caps": [("  width: 32", "  width: 8192"), ("num_steps: 30", "num_steps: 1000000")],
}
EXTRA = (
    "density: {long_run_levels: [0, 5], long_run_horizons: [100, 1000]}\n"
    "initializer: {kind: unet, channel_mults: [1, 2], attention_resolutions: [4]}\n"
)


@pytest.mark.parametrize("case", GOOD)
def test_well_formed_variants_still_load(tmp_path, case):
    text = FULL_SPEC + EXTRA
    for old, new in GOOD[case]:
        text = replace_once(text, old, new)
    spec = load_spec(write(tmp_path, "ok.yaml", text))
    assert spec.density.long_run_levels == (0, 5) and spec.initializer.channel_mults == (1, 2)
    assert spec.model_dump(mode="json")["sampler"]["step_size_b2"] == spec.sampler.step_size_b2
    assert type(spec.train.learning_rate) is float and type(spec.data.num_heldout) is int


def test_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + FULL_SPEC.encode())
    assert load_spec(path) == load_spec(write(tmp_path, "plain.yaml", FULL_SPEC))


def test_json_round_trip_keeps_validating():
    """model_dump(mode="json") gives lists for tuples; validating it again must work."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "specs/cifar10_cdrl.yaml")
    again = ExperimentSpec.model_validate(spec.model_dump(mode="json"))
    assert again.scientific_hash() == spec.scientific_hash()


def test_pyyaml_global_loader_is_untouched():
    """drlx reads numbers its own way; PyYAML's SafeLoader keeps YAML 1.1's rules."""
    import yaml

    assert yaml.safe_load("a: 010\nb: 1e-3\nc: 0x20") == {"a": 8, "b": "1e-3", "c": 32}


# ---- whatever the bytes: a SpecError or a spec, never another exception --------------------------
ALPHABET = [*":-[]{}!&*#|>'\",?%@`~<=\n\t .0123456789eE", "\x00", "\u00e9", "!!python/object:"]


def test_mutated_specs_never_end_in_a_traceback(tmp_path):
    rng = random.Random(12)
    base = FULL_SPEC + EXTRA
    for i in range(300):
        chars = list(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars.insert(at, rng.choice(ALPHABET))
            elif op < 0.7:
                del chars[at]
            else:
                chars[at] = rng.choice(ALPHABET)
        path = write(tmp_path, f"m{i}.yaml", "".join(chars))
        try:
            load_spec(path)
        except SpecError as err:
            assert err.problems and all(p.startswith(f"{path}:") for p in err.problems), err
    for i in range(50):
        path = tmp_path / f"b{i}.yaml"
        path.write_bytes(rng.randbytes(rng.randint(1, 400)))
        with pytest.raises(SpecError):
            load_spec(path)
