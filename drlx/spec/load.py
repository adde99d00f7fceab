"""YAML -> ExperimentSpec, with errors that name the file, the line and the field.

Loading is safe (no Python objects from YAML) and every bad input ends in a SpecError, never a
traceback: a file that is missing, unreadable, larger than MAX_FILE_BYTES or not UTF-8; YAML
that does not parse, nests deeper than MAX_NESTING, expands (through aliases) to more than
MAX_VALUES values, or carries a tag other than YAML's plain null, bool, int, float, str, list and
mapping (`!!python/object`, `!foo`, `!!binary`, `!!set`, timestamps such as 2024-01-01, merge
keys `<<`); a top level that is not a mapping.

Numbers follow YAML 1.2 rather than PyYAML's YAML 1.1: `1e-4` is a float (1.1 wants a dot in the
mantissa) and integers are decimal, so `010` (1.1: octal 8), `1:30` (1.1: base 60, i.e. 90) or
`0x1F` stay strings, which a numeric field refuses.

A spec may name one base spec with `extends: relative/path.yaml`; the base may not extend
another (one level of inheritance). Mappings merge key by key, the spec's own values winning;
lists and scalars replace, and so does a block whose `kind` differs from the base's. A base that
is missing or unreadable is reported at the `extends:` line of the spec that names it; a bad
value in the base at its own line, followed by `(via FILE:LINE extends)`.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from drlx.errors import DrlxError
from drlx.spec.experiment import ExperimentSpec

MAX_FILE_BYTES = 1 << 20  # 1 MiB; the largest shipped spec is under 4 KB
MAX_NESTING = 32  # mappings and lists inside each other; specs use 4 (sampler.generation.x[0])
MAX_VALUES = 100_000  # values once aliases are expanded; refuses alias bombs ("billion laughs")

_TAG = "tag:yaml.org,2002:"
_INT, _FLOAT = _TAG + "int", _TAG + "float"
_SCALAR_TAGS = {_TAG + name for name in ("null", "bool", "int", "float", "str")}
_ALLOWED_TAGS = {
    yaml.ScalarNode: _SCALAR_TAGS,
    yaml.SequenceNode: {_TAG + "seq"},
    yaml.MappingNode: {_TAG + "map"},
}
_NODE_NAMES = {
    yaml.ScalarNode: "a scalar",
    yaml.SequenceNode: "a list",
    yaml.MappingNode: "a mapping",
}


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's numbers (see the module docstring). Its resolvers are its own
    copy: PyYAML's global SafeLoader is left as it is."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
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


class SpecError(DrlxError, ValueError):
    """An invalid spec; `problems` holds one `file:line: field.path: message` per error (without
    the field for problems of the file itself, such as invalid YAML)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _problem(file: str, line: int, path: tuple, message: str) -> str:
    field = ".".join(str(p) for p in path)
    return f"{file}:{line}: {field}: {message}" if field else f"{file}:{line}: {message}"


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


class _TooLarge(Exception):
    """Aliases expand a value beyond MAX_VALUES or MAX_NESTING; reported at its top-level key."""


class _Builder:
    """Plain Python data from a composed node, recording the line of every key path."""

    def __init__(self, file: str, where: dict):
        self.file, self.where, self.count = file, where, 0
        self.loader = _Loader("")

    def fail(self, node: yaml.Node, path: tuple, message: str) -> SpecError:
        return SpecError([_problem(self.file, node.start_mark.line + 1, path, message)])

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooLarge(f"more than {MAX_VALUES} values once aliases are expanded")
        if len(path) > MAX_NESTING:  # only an alias of an enclosing node gets this deep
            raise _TooLarge(f"nested deeper than {MAX_NESTING} levels (an alias inside itself?)")
        if node.tag not in _ALLOWED_TAGS[type(node)]:
            raise self.fail(node, path, _tag_problem(node))
        self.where[path] = Located(self.file, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError):
            # e.g. `!!int abc`, `!!bool maybe`, or an integer of more than 4300 digits
            message = f"cannot read {_short(node.value)} as {_tag_name(node.tag)}"
            raise self.fail(node, path, message) from None

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = _NODE_NAMES[type(key_node)]
                raise self.fail(key_node, path, f"a key must be a plain name, found {kind}")
            if key_node.tag == _TAG + "merge":
                raise self.fail(key_node, path, "merge keys (<<) are not supported; use extends:")
            if key_node.tag not in _SCALAR_TAGS:
                raise self.fail(key_node, path, _tag_problem(key_node))
            key = key_node.value
            if key in out:
                raise self.fail(key_node, (*path, key), "duplicate key")
            try:
                out[key] = self.build(value_node, (*path, key))
            except _TooLarge as err:
                if path:
                    raise
                raise self.fail(key_node, (key,), str(err)) from None
            self.where[(*path, key)] = Located(self.file, key_node.start_mark.line + 1)
        return out


def _tag_problem(node: yaml.Node) -> str:
    hint = "; quote it to write a string" if isinstance(node, yaml.ScalarNode) else ""
    return (
        f"YAML tag {_tag_name(node.tag)} is not allowed (a spec holds plain numbers, strings, "
        f"booleans, null, lists and mappings){hint}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def _text(path: Path) -> str:
    """The file's text: at most MAX_FILE_BYTES of UTF-8 (a UTF-8 byte-order mark is allowed)."""
    file = str(path)
    try:
        if not path.is_file():
            raise SpecError([f"{file}:1: spec file not found"])
        with path.open("rb") as stream:  # read no more than the limit, whatever the size
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise SpecError([f"{file}:1: cannot read the spec file: {err.strerror or err}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError([f"{file}:1: larger than {MAX_FILE_BYTES} bytes, the most a spec may be"])
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start]
        raise SpecError(
            [f"{file}:{line}: not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"]
        ) from None


def _events(text: str, file: str) -> Iterator[yaml.Event]:
    """The parser's events (the parser, unlike the composer, does not recurse), refusing nesting
    deeper than MAX_NESTING before anything recursive sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = event.start_mark.line + 1
                raise SpecError([f"{file}:{line}: nested deeper than {MAX_NESTING} levels"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        yield event


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        for _ in _events(text, file):
            pass
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        if err.context_mark and mark.index >= len(text.rstrip()):
            mark = err.context_mark  # e.g. an unclosed `[`: where it opened, not the file's end
        line = mark.line + 1 if mark else 1
        problem = "; ".join(p for p in (err.context, err.problem) if p) or str(err)
        raise SpecError([f"{file}:{line}: not valid YAML: {problem}"]) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, err.position) + 1
        raise SpecError(
            [f"{file}:{line}: not valid YAML: character U+{err.character:04X} is not allowed"]
        ) from None
    except yaml.YAMLError as err:
        raise SpecError([f"{file}:1: not valid YAML: {err}"]) from None


def _read(path: Path, where: dict) -> dict:
    """Parse one YAML file into a dict, filling `where` with key-path -> location."""
    file = str(path)
    node = _compose(_text(path), file)
    if node is None:
        raise SpecError([f"{file}:1: the file holds no YAML; a spec is a mapping of blocks"])
    if not isinstance(node, yaml.MappingNode):
        kind = _NODE_NAMES[type(node)]
        line = node.start_mark.line + 1
        raise SpecError([f"{file}:{line}: a spec must be a mapping of blocks, found {kind}"])
    builder = _Builder(file, where)
    try:
        return builder.build(node, ())
    finally:
        builder.loader.dispose()


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
    """Read a spec and its base (if any) into one dict, with the location of every key path.

    Problems with the base itself (its name, a missing or unreadable file, a base that extends
    again) are reported at the `extends:` line of `path`; `where[("extends",)]` keeps that line.
    """
    path = Path(path)
    own_where: dict = {}
    own = _read(path, own_where)
    if "extends" not in own:
        return own, own_where
    base_name = own.pop("extends")
    at = own_where[("extends",)]
    here = f"{at.file}:{at.line}: extends"
    if not isinstance(base_name, str) or not base_name.strip():
        found = _short(base_name)
        raise SpecError([f"{here}: expected the path of a base spec, found {found}"])
    base_path = path.parent / base_name
    base_where: dict = {}
    try:
        if not base_path.is_file():
            raise SpecError([f"{here}: base spec {base_path} not found"])
        base = _read(base_path, base_where)
    except OSError as err:  # e.g. a name too long for the file system
        raise SpecError([f"{here}: cannot read base spec {base_path}: {err}"]) from None
    except SpecError as err:
        if err.problems[0].startswith(here):
            raise
        raise SpecError([f"{here}: in base spec {p}" for p in err.problems]) from None
    if "extends" in base:
        line = base_where[("extends",)].line
        try:
            cycle = (base_path.parent / str(base["extends"])).resolve() == path.resolve()
        except (OSError, ValueError):
            cycle = False
        what = "extends this spec back (a cycle)" if cycle else "extends another spec"
        raise SpecError(
            [f"{here}: base spec {base_path} {what} at its line {line}; a base may not extend"]
        )
    return _merge(base, own), {**base_where, **own_where}


def _locate(raw: dict, loc: tuple, where: dict, fallback: Located) -> tuple[Located, str]:
    """Map a pydantic error location onto the YAML key path (skipping union tags)."""
    node, path = raw, ()
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node, path = node[part], (*path, part)
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # discriminated-union tag inserted by pydantic
        elif isinstance(part, str) and (not isinstance(node, dict) or not part.isidentifier()):
            continue  # a member of a union (`literal['all']`, `constrained-int`): not a field
        else:
            path_text = ".".join(str(p) for p in (*path, part))
            return where.get(path, fallback), path_text
    return where.get(path, fallback), ".".join(str(p) for p in path) or "<spec>"


def _describe(err: dict) -> tuple[str, str]:
    """The message of a pydantic error, and what was found (empty when nothing was)."""
    kind, value = err["type"], err.get("input")
    if kind == "missing":
        if isinstance(err["loc"][-1], int):  # an item of a fixed-length tuple
            return "missing item: the list is too short", ""
        return "required field is missing", ""
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"expected kind {ctx['expected_tags']}", repr(ctx["tag"])
    if kind == "union_tag_not_found":
        return "required field is missing (it selects the block's variant)", ""
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see `drlx schema`)", ""
    message = err["msg"]
    if kind == "finite_number":
        message = "Input should be a finite number (no NaN or infinity, |x| < 1.8e308)"
    elif isinstance(value, bool) and kind in ("int_type", "float_type"):
        message += " (true/false is a boolean, not a number)"
    elif isinstance(value, str) and kind in ("int_type", "float_type"):
        message += " (a string: write numbers unquoted, integers in decimal)"
    elif isinstance(value, str) and kind == "bool_type":
        message += " (a string: write true or false unquoted)"
    elif isinstance(value, float) and kind == "int_type":
        message += " (a float: write integers without a decimal point or exponent)"
    return message, _short(value) if "input" in err else ""


def _record(tree: dict, where: dict, file: str, prefix: tuple = ()) -> None:
    """Locate every key path of an in-memory mapping at `file` (line 1)."""
    for key, value in tree.items():
        where[(*prefix, key)] = Located(file, 1)
        if isinstance(value, dict):
            _record(value, where, file, (*prefix, key))


def _where_text(at: Located, extends: Located | None) -> str:
    """`file:line`, and for a value written in the base, the `extends:` line that brought it."""
    if extends and at.file not in (extends.file, "<overrides>"):
        return f"{at.file}:{at.line} (via {extends.file}:{extends.line} extends)"
    return f"{at.file}:{at.line}"


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
    extends = where.get(("extends",))
    try:
        spec = ExperimentSpec.model_validate(raw)
        spec.set_lines({path: _where_text(at, extends) for path, at in where.items()})
        return spec
    except ValidationError as exc:
        grouped: dict[tuple, list] = {}  # one line per field: a union's members share it
        for err in exc.errors(include_url=False):
            loc = (*err["loc"], "kind") if err["type"].startswith("union_tag") else err["loc"]
            located, field = _locate(raw, loc, where, fallback)
            grouped.setdefault((located, field), []).append(_describe(err))
        problems = []
        for (located, field), described in grouped.items():
            message = " or ".join(dict.fromkeys(m for m, _ in described))
            found = next((f for _, f in described if f), "")
            problem = f"{located.file}:{located.line}: {field}: {message}"
            problem += f", found {found}" if found else ""
            if extends and located.file not in (extends.file, "<overrides>"):
                problem += f" (via {extends.file}:{extends.line} extends)"
            problems.append(problem)
        raise SpecError(problems) from None
