"""`drlx deps`: every DVC stage's code dependencies, computed from the code.

A stage depends on its script and on every Python file of the repository that running the script
imports, transitively. They are found by reading the files' syntax trees (`ast`), never by
importing them (no JAX here), with Python's own rules:

- `import a.b.c` runs `a/__init__.py`, `a/b/__init__.py` and `a/b/c.py` (or `c/__init__.py`);
- `from a.b import x` runs `a.b`, and `a/b/x.py` too when `x` is a submodule rather than a name;
- `from .x import y` / `from .. import y` resolve against the importing file's package;
- imports inside functions and classes count (they run when called); imports under
  `if TYPE_CHECKING:` do not (they never run), while its `else:` branch does;
- a top-level name resolves against the script's folder first (`python stages/train.py` puts
  `stages/` first on sys.path, so `from common import parser` is `stages/common.py`), then the
  repository root (the editable install of `drlx`); a name found in neither place is third-party
  or standard library, not a dependency;
- a C/C++ source in the folder of an imported module is a dependency too: the extension such a
  module loads is compiled from it (drlx/ops/onednn_conv.cc, beside drlx/ops/conv.py).

`render` rewrites a dvc.yaml's `deps` lists with these files (ruamel.yaml round trip: comments,
key order and layout are kept); `write` and `check` apply it to files.
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import re
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

# The dvc.yaml files `drlx deps` maintains, relative to the repository root.
DVC_FILES = ("dvc.yaml", "stages/paper/dvc.yaml", "stages/tasks/dvc.yaml")
PACKAGE = "drlx"  # the repository's package: its folder and its .py files are code deps
NATIVE_SUFFIXES = (".c", ".cc", ".cpp", ".h", ".hpp")  # sources of compiled extensions

# `python stages/NAME.py ...` (also python3 / python3.11, options before the script)
_SCRIPT = re.compile(r"(?:^|\s)python[0-9.]*\s+(?:-\S+\s+)*([^\s'\"]+\.py)(?=\s|$)")

# The root dvc.yaml's header said the whole package was every stage's code; `render` says instead
# where the code deps come from.
_HEADER_OLD = "# the maths from drlx/. Every spec file is tracked as params, drlx/ as code.\n"
_HEADER_NEW = (
    "# the maths from drlx/. Every spec file is tracked as params; each stage's code deps are the\n"
    "# Python files its script imports, computed by `drlx deps` (checked by the tests).\n"
)


# --- imports -----------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (or any `X.TYPE_CHECKING`)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth (functions, classes, try blocks), except
    the body of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return found


def _module_file(folder: Path, name: str) -> Path | None:
    """`folder/name/__init__.py` (a regular package) or `folder/name.py`, if either exists."""
    init = folder / name / "__init__.py"
    if init.is_file():
        return init
    module = folder / f"{name}.py"
    return module if module.is_file() else None


def _walk(folder: Path, parts: list[str]) -> tuple[list[Path], Path | None]:
    """The files executed by importing the dotted `parts` below `folder`: each package's
    `__init__.py` on the way, then the module itself. Also the folder of the last part when it is
    a package (for `from pkg import submodule`), else None. Stops at the first missing part
    (Python would raise ImportError there; a name, not a module, in `from ... import name`)."""
    files: list[Path] = []
    for name in parts:
        found = _module_file(folder, name)
        if found is None:
            return files, None
        files.append(found)
        if found.name != "__init__.py":  # a plain module: nothing can be imported below it
            return files, None
        folder = found.parent
    return files, folder


def _top_folder(name: str, bases: list[Path]) -> Path | None:
    """The first search folder holding top-level module or package `name`, as sys.path would."""
    for base in bases:
        if _module_file(base, name) is not None:
            return base
    return None


def _package_folder(path: Path, level: int) -> Path:
    """The folder a relative import of `level` dots starts from, in file `path`."""
    folder = path.parent  # the package of a module, or of an __init__.py
    for _ in range(level - 1):
        folder = folder.parent
    return folder


def _imported_files(
    path: Path, bases: list[Path], missing: list | None = None, memo: dict | None = None
) -> frozenset[Path]:
    """The repository files that importing (or running) `path` executes directly. Imports of a
    repository module that does not exist (an ImportError when they run) go to `missing`, as
    (path, line, module). `memo`: results kept by file for one pass over a pipeline's stages,
    whose scripts import mostly the same files (each is then parsed once, not once a stage)."""
    key = (path, tuple(bases))
    found = memo.get(key) if memo is not None else None
    if found is None:
        found = _scan(path, bases)
        if memo is not None:
            memo[key] = found
    files, lost = found
    if missing is not None:
        missing.extend(lost)
    return files


def _scan(path: Path, bases: list[Path]) -> tuple[frozenset[Path], tuple]:
    """`_imported_files` of `path`, and its imports of missing modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    files: set[Path] = set()
    missing: list = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                base = _top_folder(parts[0], bases)
                if base is not None:
                    executed = _walk(base, parts)[0]
                    files.update(executed)
                    if len(executed) < len(parts):
                        missing.append((path, node.lineno, alias.name))
            continue
        # from X import a, b
        if node.level:  # relative: the importing file's package, up level - 1
            folder = _package_folder(path, node.level)
            init = folder / "__init__.py"
            if init.is_file():
                files.add(init)
            parts = node.module.split(".") if node.module else []
            executed, package = _walk(folder, parts) if parts else ([], folder)
        else:
            parts = (node.module or "").split(".")
            base = _top_folder(parts[0], bases)
            if base is None:  # standard library or third-party
                continue
            executed, package = _walk(base, parts)
        files.update(executed)
        if len(executed) < len(parts):
            missing.append((path, node.lineno, "." * node.level + (node.module or "")))
        if package is not None and len(executed) == len(parts):  # X is a package
            for alias in node.names:
                if alias.name != "*":
                    submodule = _module_file(package, alias.name)
                    if submodule is not None:
                        files.add(submodule)
    return frozenset(files), tuple(missing)


def import_graph(
    script: Path, root: Path, missing: list | None = None, memo: dict | None = None
) -> dict[Path, set[Path]]:
    """Every file running `script` executes (absolute paths), each with the files it imports;
    imports of repository modules that do not exist go to `missing` (see `_imported_files`,
    also for `memo`)."""
    root = Path(root).resolve()
    script = (root / script).resolve()
    bases = [script.parent, root]
    graph: dict[Path, set[Path]] = {}
    todo = [script]
    while todo:
        path = todo.pop()
        if path in graph:
            continue
        graph[path] = {f.resolve() for f in _imported_files(path, bases, missing, memo)}
        todo.extend(f for f in graph[path] if f not in graph)
    return graph


def unresolved_imports(script: Path, root: Path, memo: dict | None = None) -> list[str]:
    """`file:line: module` for each import, reachable from `script`, of a module of the
    repository that does not exist (it would fail when it runs; often a refactor in progress)."""
    root = Path(root).resolve()
    missing: list = []
    import_graph(script, root, missing, memo)
    return sorted(
        {f"{_rel(path, root)}:{line}: {module}" for path, line, module in missing},
    )


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def code_deps(script: Path, root: Path, memo: dict | None = None) -> list[str]:
    """The stage script and every repository Python file it imports, transitively, and the
    C/C++ sources beside them (NATIVE_SUFFIXES: compiled into an extension that such a module
    loads, e.g. drlx/ops/onednn_conv.cc beside drlx/ops/conv.py): paths relative to `root`,
    posix, sorted. `script` is absolute or relative to `root`."""
    root = Path(root).resolve()
    inside = {p for p in import_graph(script, root, memo=memo) if p.is_relative_to(root)}
    for folder in {p.parent for p in inside if p.parent != root}:
        inside.update(f for f in folder.iterdir() if f.suffix in NATIVE_SUFFIXES)
    return sorted(p.relative_to(root).as_posix() for p in inside)


def import_chain(script: Path, target: Path, root: Path) -> list[str] | None:
    """A shortest chain of imports from `script` to `target` (paths relative to `root`), or None
    if running the script never imports it: why a stage depends on a file."""
    root = Path(root).resolve()
    graph = import_graph(script, root)
    start, goal = (root / script).resolve(), (root / target).resolve()
    parent: dict[Path, Path | None] = {start: None}
    queue = [start]
    for path in queue:  # breadth first, in a stable order
        if path == goal:
            chain = []
            node: Path | None = path
            while node is not None:
                chain.append(node.relative_to(root).as_posix())
                node = parent[node]
            return chain[::-1]
        for child in sorted(graph.get(path, ())):
            if child not in parent:
                parent[child] = path
                queue.append(child)
    return None


# --- dvc.yaml -----------------------------------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap long lines (folded `cmd` strings keep their breaks)
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _script_of(cmd: object) -> str | None:
    if not isinstance(cmd, str):
        return None  # a list of commands: not handled, deps left as written
    match = _SCRIPT.search(cmd)
    return match.group(1) if match else None


def _is_code_dep(entry: object, wdir: Path, script_dir: Path, packages: list[Path]) -> bool:
    """A dep `render` owns: a package folder itself, a .py file or a C/C++ source under a
    package or the script's folder. Anything else (data, models, a subfolder of the package)
    stays as written."""
    if not isinstance(entry, str) or "${" in entry:
        return False
    path = Path(os.path.normpath(wdir / entry))
    if path in packages:
        return True
    return path.suffix in (".py", *NATIVE_SUFFIXES) and any(
        path.is_relative_to(folder) for folder in (*packages, script_dir)
    )


def _replace_deps(deps, code: list[str], is_code) -> None:
    """Put `code` where the first code dep was (the front if there was none), the other deps
    after it in their order; comments of kept entries move with them, and a comment after the
    last code dep (e.g. one introducing the next entry) moves to the new last code dep."""
    old = list(deps)
    code_at = [i for i, e in enumerate(old) if is_code(e)]
    others = [i for i, e in enumerate(old) if not is_code(e)]
    start = code_at[0] if code_at else 0
    before = [i for i in others if i < start]
    after = [i for i in others if i >= start]
    new_index = {old_i: new_i for new_i, old_i in enumerate(before)}
    new_index.update({old_i: len(before) + len(code) + k for k, old_i in enumerate(after)})
    if code_at and code:
        new_index[code_at[-1]] = len(before) + len(code) - 1
    comments = dict(deps.ca.items)
    values = [old[i] for i in before] + list(code) + [old[i] for i in after]
    del deps[:]
    deps.ca.items.clear()
    deps.extend(values)
    for old_i, comment in comments.items():
        if old_i in new_index:
            deps.ca.items[new_index[old_i]] = comment


def _stages(data, dvc_yaml: Path):
    """(name, body, wdir, script) of each stage running `python PATH.py`; `body` is the stage, or
    its `do` for a foreach stage; `wdir` and `script` absolute."""
    for name, stage in ((data or {}).get("stages") or {}).items():
        body = stage["do"] if "foreach" in stage else stage
        script = _script_of(body.get("cmd"))
        if script is None:
            continue
        wdir = Path(os.path.normpath(dvc_yaml.parent / body.get("wdir", ".")))
        script_path = Path(os.path.normpath(wdir / script))
        if not script_path.is_file():
            raise FileNotFoundError(f"{dvc_yaml}: stage {name}: no script {script_path}")
        yield name, body, wdir, script_path


def render(
    dvc_yaml: Path,
    root: Path,
    packages: tuple[str, ...] = (PACKAGE,),
    memo: dict | None = None,
) -> str:
    """The text of `dvc_yaml` with each `python PATH.py` stage's code deps recomputed; paths
    relative to the stage's wdir (default the dvc.yaml's folder), as DVC reads them. `packages`:
    the repository's package folders (relative to `root`), whose .py files are code deps.
    `memo`: see `_imported_files` (one for several pipelines of the same code)."""
    dvc_yaml, root = Path(dvc_yaml).resolve(), Path(root).resolve()
    folders = [root / p for p in packages]
    yaml = _yaml()
    data = yaml.load(dvc_yaml.read_text(encoding="utf-8"))
    memo = {} if memo is None else memo
    for _, body, wdir, script in _stages(data, dvc_yaml):
        deps_here = code_deps(script, root, memo)
        code = [Path(os.path.relpath(root / p, wdir)).as_posix() for p in deps_here]
        deps = body.get("deps")
        if deps is None:
            body["deps"] = deps = CommentedSeq()  # a stage with no deps yet

        def is_code(entry, wdir=wdir, script_dir=script.parent):
            return _is_code_dep(entry, wdir, script_dir, folders)

        if [e for e in deps if is_code(e)] != code:
            _replace_deps(deps, code, is_code)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue().replace(_HEADER_OLD, _HEADER_NEW)


# --- files --------------------------------------------------------------------------------------


def find_root(start: str | Path = ".") -> Path:
    """The closest folder at or above `start` holding dvc.yaml and the package (from
    stages/paper/ too, whose own dvc.yaml is not the root)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file() and (folder / PACKAGE / "__init__.py").is_file():
            return folder
    raise FileNotFoundError(f"{start}: no dvc.yaml and {PACKAGE}/ here or above")


def _paths(root: Path, paths=None) -> list[Path]:
    return [Path(p) if Path(p).is_absolute() else root / p for p in (paths or DVC_FILES)]


def check(root: Path, paths=None) -> list[str]:
    """One unified diff (current -> rendered) per dvc.yaml whose deps are stale; none if current."""
    root = Path(root).resolve()
    diffs = []
    memo: dict = {}  # the pipelines share their code: each file is parsed once for all
    for path in _paths(root, paths):
        current = path.read_text(encoding="utf-8")
        rendered = render(path, root, memo=memo)
        if rendered != current:
            name = _rel(path, root)
            lines = difflib.unified_diff(
                current.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"{name} (current)",
                tofile=f"{name} (drlx deps)",
            )
            diffs.append("".join(lines))
    return diffs


def write(root: Path, paths=None) -> list[Path]:
    """Rewrite each dvc.yaml whose deps are stale (atomically); the files changed."""
    root = Path(root).resolve()
    changed = []
    memo: dict = {}
    for path in _paths(root, paths):
        rendered = render(path, root, memo=memo)
        if rendered != path.read_text(encoding="utf-8"):
            tmp = path.with_name(f".{path.name}.drlx-deps.tmp")
            tmp.write_text(rendered, encoding="utf-8")
            os.replace(tmp, path)
            changed.append(path)
    return changed


def warnings(root: Path, paths=None) -> list[str]:
    """`file:line: module` for each import of a repository module that does not exist, reachable
    from a stage's script: the deps written for it miss whatever that module would import."""
    root = Path(root).resolve()
    found: set[str] = set()
    memo: dict = {}
    for path in _paths(root, paths):
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        for _, _, _, script in _stages(data, path):
            found.update(unresolved_imports(script, root, memo))
    return sorted(found)
