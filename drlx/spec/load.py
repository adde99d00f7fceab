"""YAML -> ExperimentSpec, with errors that name the file, the line and the field.

Loading is safe (no Python objects from YAML). A spec may name one base spec with
`extends: relative/path.yaml`; the base may not extend another (one level of inheritance).
Mappings merge key by key, the spec's own values winning; lists and scalars replace, and so does
a block whose `kind` differs from the base's.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from drlx.spec.experiment import ExperimentSpec


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 wants a dot in the mantissa)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Located:
    """Where a value was written: file and 1-based line."""

    file: str
    line: int


class SpecError(ValueError):
    """An invalid spec; `problems` holds one `file:line: field.path: message` per error."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _to_python(node: yaml.Node, file: str, path: tuple, where: dict) -> Any:
    """Construct plain Python data from a composed node, recording each key path's line."""
    where[path] = Located(file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                field = ".".join(str(p) for p in (*path, key))
                raise SpecError([f"{file}:{key_node.start_mark.line + 1}: {field}: duplicate key"])
            out[key] = _to_python(value_node, file, (*path, key), where)
            where[(*path, key)] = Located(file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, file, (*path, i), where) for i, v in enumerate(node.value)]
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _read(path: Path, where: dict) -> dict:
    """Parse one YAML file into a dict, filling `where` with key-path -> location."""
    file = str(path)
    if not path.is_file():
        raise SpecError([f"{file}:1: spec file not found"])
    try:
        node = yaml.compose(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(err, "problem", err)
        raise SpecError([f"{file}:{line}: not valid YAML: {problem}"]) from None
    if not isinstance(node, yaml.MappingNode):
        raise SpecError([f"{file}:1: a spec must be a mapping of blocks"])
    return _to_python(node, file, (), where)


def _merge(base: dict, own: dict) -> dict:
    out = dict(base)
    for key, value in own.items():
        inherited = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(inherited, dict)
            and value.get("kind", inherited.get("kind")) == inherited.get("kind")
        ):  # same kind (or none): merge field by field; another kind replaces the whole block
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: str | Path) -> tuple[dict, dict]:
    """Read a spec and its base (if any) into one dict, with the location of every key path."""
    path = Path(path)
    own_where: dict = {}
    own = _read(path, own_where)
    base_name = own.pop("extends", None)
    if base_name is None:
        return own, own_where
    base_path = path.parent / str(base_name)
    base_where: dict = {}
    base = _read(base_path, base_where)
    if "extends" in base:
        line = base_where[("extends",)].line
        raise SpecError([f"{base_path}:{line}: extends: a base spec may not extend another"])
    return _merge(base, own), {**base_where, **own_where}


def _locate(raw: dict, loc: tuple, where: dict, fallback: Located) -> tuple[Located, str]:
    """Map a pydantic error location onto the YAML key path (skipping union tags)."""
    node, path = raw, ()
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node, path = node[part], (*path, part)
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # discriminated-union tag inserted by pydantic
        else:
            path_text = ".".join(str(p) for p in (*path, part))
            return where.get(path, fallback), path_text
    return where.get(path, fallback), ".".join(str(p) for p in path) or "<spec>"


def _describe(err: dict) -> str:
    message = err["msg"]
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "union_tag_invalid":
        ctx = err["ctx"]
        return f"expected kind {ctx['expected_tags']}, found {ctx['tag']!r}"
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; see `drlx schema`)"
    return f"{message}, found {err['input']!r}" if "input" in err else message


def _record(tree: dict, where: dict, file: str, prefix: tuple = ()) -> None:
    """Locate every key path of an in-memory mapping at `file` (line 1)."""
    for key, value in tree.items():
        where[(*prefix, key)] = Located(file, 1)
        if isinstance(value, dict):
            _record(value, where, file, (*prefix, key))


def load_spec(path: str | Path, overrides: dict | None = None) -> ExperimentSpec:
    """Load and validate a spec file.

    Arguments:
        path: the YAML file.
        overrides: blocks merged over the file's as a spec merges over its base, e.g.
            {"train": {"num_steps": 500}}; problems in them are located at `<overrides>`.

    Returns:
        The frozen ExperimentSpec.

    Raises:
        SpecError: with one `file:line: field.path: expected ..., found ...` line per problem.
    """
    raw, where = load_raw(path)
    if overrides:
        raw = _merge(raw, overrides)
        _record(overrides, where, "<overrides>")
    fallback = Located(str(path), 1)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = (*err["loc"], "kind") if err["type"] == "union_tag_invalid" else err["loc"]
            located, field = _locate(raw, loc, where, fallback)
            problems.append(f"{located.file}:{located.line}: {field}: {_describe(err)}")
        raise SpecError(problems) from None
