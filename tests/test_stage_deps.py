"""Stage code deps computed from the code (drlx/stage_deps.py, `drlx deps`)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from drlx import stage_deps
from drlx.stage_deps import check, code_deps, import_chain, render, unresolved_imports

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = [ROOT / name for name in stage_deps.DVC_FILES]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def _stage_bodies(text: str) -> dict[str, dict]:
    data = YAML(typ="safe").load(text)
    return {
        name: stage["do"] if "foreach" in stage else stage for name, stage in data["stages"].items()
    }


def _repo_copy(tmp_path: Path) -> Path:
    """The code and both dvc.yaml files of the repository, copied (render reads the scripts)."""
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("drlx", "stages"):
        shutil.copytree(ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


@pytest.mark.parametrize("path", DVC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_dvc_yaml_deps_are_current(path):
    """The gate: each dvc.yaml is its own rendering (else run `drlx deps`)."""
    assert path.read_text() == render(path, ROOT), f"{path}: stale code deps, run `drlx deps`"


@pytest.mark.parametrize("name", stage_deps.DVC_FILES)
def test_render_is_stable_and_only_touches_deps(name, tmp_path):
    """Rendering a rendered file changes nothing; rendering changes no key but `deps`, and in
    `deps` only code (the other deps keep their order); the `drlx` folder dep is gone."""
    root = _repo_copy(tmp_path)
    path = root / name
    original = path.read_text()
    once = render(path, root)
    path.write_text(once)
    assert render(path, root) == once
    before, after = _stage_bodies(original), _stage_bodies(once)
    assert before.keys() == after.keys()
    for stage in before:
        strip = [{k: v for k, v in b.items() if k != "deps"} for b in (before[stage], after[stage])]
        assert strip[0] == strip[1], stage
        others = [
            [d for d in b["deps"] if d != "drlx" and not d.endswith(".py")]
            for b in (before[stage], after[stage])
        ]
        assert others[0] == others[1], f"{stage}: non-code deps changed"
        assert "drlx" not in after[stage]["deps"]
        script = next(d for d in before[stage]["deps"] if d.endswith(".py"))
        assert script in after[stage]["deps"] and "stages/common.py" in after[stage]["deps"]


def test_code_deps_synthetic_package(tmp_path):
    """Closure over every import form; package inits in; function-level imports in;
    TYPE_CHECKING imports out (their else branch in); stdlib and third-party out; a script's
    sibling wins over a same-named module at the root; a C/C++ source beside an imported module
    in (the extension it loads is built from it), one in a folder nothing imports from out."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .version import VERSION\n",
            "pkg/version.py": "VERSION = 1\n",
            "pkg/core.py": """\
                import json
                import os
                from typing import TYPE_CHECKING

                from pkg.sub.deep import thing

                if TYPE_CHECKING:
                    from pkg import typing_only
                else:
                    import pkg.runtime_else


                def lazy_user():
                    from pkg import lazy  # runs when called: a dep

                    return lazy


                def broken():
                    import pkg.gone  # no such module: reported, not a dep
                """,
            "pkg/sub/__init__.py": "",
            "pkg/sub/deep.py": """\
                from . import sibling
                from .. import rel_two
                from ..helpers import helper

                thing = 1
                """,
            "pkg/sub/sibling.py": "",
            "pkg/sub/kernel.cc": "// compiled into an extension that pkg.sub loads\n",
            "pkg/sub/notes.txt": "",
            "pkg/unimported/__init__.py": "",
            "pkg/unimported/kernel.cc": "",
            "pkg/helpers.py": "import numpy\n\nhelper = 1\n",
            "pkg/rel_two.py": "",
            "pkg/lazy.py": "",
            "pkg/typing_only.py": "",
            "pkg/runtime_else.py": "",
            "pkg/unused.py": "",
            "pkg/names.py": "X = 1\n",
            "pkg/other/__init__.py": "from pkg.other.impl import run\n",
            "pkg/other/impl.py": "def run(): pass\n",
            "pkg/other/never.py": "",
            "scripts/run.py": """\
                import sys

                import pkg.core
                from common import parser
                from pkg import names, other

                if __name__ == "__main__":
                    parser()
                """,
            "scripts/common.py": """\
                import argparse

                from pkg.names import X


                def parser():
                    return argparse.ArgumentParser(description=str(X))
                """,
            "scripts/unrelated.py": "",
            "common.py": "raise RuntimeError('shadowed by scripts/common.py')\n",
        },
    )
    expected = {
        "scripts/run.py",
        "scripts/common.py",
        "pkg/__init__.py",
        "pkg/version.py",
        "pkg/core.py",
        "pkg/sub/__init__.py",
        "pkg/sub/deep.py",
        "pkg/sub/sibling.py",
        "pkg/sub/kernel.cc",
        "pkg/rel_two.py",
        "pkg/helpers.py",
        "pkg/lazy.py",
        "pkg/runtime_else.py",
        "pkg/names.py",
        "pkg/other/__init__.py",
        "pkg/other/impl.py",
    }
    deps = code_deps(Path("scripts/run.py"), tmp_path)
    assert deps == sorted(deps)
    assert set(deps) == expected
    chain = import_chain(Path("scripts/run.py"), Path("pkg/rel_two.py"), tmp_path)
    assert chain == ["scripts/run.py", "pkg/core.py", "pkg/sub/deep.py", "pkg/rel_two.py"]
    assert import_chain(Path("scripts/run.py"), Path("pkg/unused.py"), tmp_path) is None
    assert unresolved_imports(Path("scripts/run.py"), tmp_path) == ["pkg/core.py:20: pkg.gone"]
    # a memo shared by several scans (as `render` shares one over a pipeline's stages) changes
    # no answer: the second scan of each file, from the memo, still reports the missing module
    memo: dict = {}
    for _ in range(2):
        assert code_deps(Path("scripts/run.py"), tmp_path, memo) == deps
        missing = unresolved_imports(Path("scripts/run.py"), tmp_path, memo)
        assert missing == ["pkg/core.py:20: pkg.gone"]
    assert len(memo) == len(expected) - 1  # each Python file scanned once


def test_memo_gives_every_real_stage_its_own_deps():
    """The repository's pipelines with one memo for all their stages: each stage's deps equal
    a fresh scan's, although its scripts share most files (e.g. stages/sample.py after
    stages/train.py)."""
    memo: dict = {}
    scripts = {
        script
        for path in DVC_FILES
        for _, _, _, script in stage_deps._stages(YAML(typ="safe").load(path.read_text()), path)
    }
    for script in sorted(scripts):
        assert code_deps(script, ROOT, memo) == code_deps(script, ROOT), script
    assert len(scripts) > 5 and memo


def test_render_synthetic_pipeline(tmp_path):
    """Code deps replace the old ones where they were, other deps follow in their order, paths
    are relative to the stage's wdir, comments survive; stages without a script are untouched."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "",
            "pkg/c.py": "",
            "scripts/run.py": "from pkg import a\n",
            "scripts/other.py": "",
            "pipe/dvc.yaml": """\
                # header comment
                stages:
                  looped:
                    foreach: [x, y]
                    do:
                      wdir: ..
                      cmd: >-
                        python scripts/run.py --in data/${item}.csv
                      deps:
                        - data/${item}.csv  # input
                        - scripts/run.py
                        - pkg
                        - pkg/c.py
                        # the model, after the code
                        - model.bin
                  local:
                    cmd: python ../scripts/run.py
                    deps:
                      - ../scripts/other.py
                  shell:
                    cmd: echo hi
                    deps:
                      - pkg
                """,
        },
    )
    text = render(tmp_path / "pipe/dvc.yaml", tmp_path, packages=("pkg",))
    bodies = _stage_bodies(text)
    assert bodies["looped"]["deps"] == [
        "data/${item}.csv",
        "pkg/__init__.py",
        "pkg/a.py",
        "pkg/b.py",
        "scripts/run.py",
        "model.bin",
    ]
    assert bodies["local"]["deps"] == [
        "../pkg/__init__.py",
        "../pkg/a.py",
        "../pkg/b.py",
        "../scripts/run.py",
    ]
    assert bodies["shell"]["deps"] == ["pkg"]
    assert "# header comment" in text and "- data/${item}.csv  # input" in text
    assert "- scripts/run.py\n        # the model, after the code\n        - model.bin\n" in text
    (tmp_path / "pipe/dvc.yaml").write_text(text)
    assert render(tmp_path / "pipe/dvc.yaml", tmp_path, packages=("pkg",)) == text


@pytest.mark.parametrize("mutation", ["drop", "add_report"])
def test_check_reports_a_mutated_dvc_yaml(tmp_path, mutation):
    """A computed dep removed, or a module the stage does not import added: a difference."""
    root = _repo_copy(tmp_path)
    path = root / "dvc.yaml"
    path.write_text(render(path, root))
    assert check(root, ["dvc.yaml"]) == []
    text = path.read_text()
    if mutation == "drop":
        line = "        - drlx/ledger.py\n"
        assert line in text
        text = text.replace(line, "", 1)
        expect = "+" + line
    else:
        anchor = "        - stages/train.py\n"
        assert anchor in text
        text = text.replace(anchor, anchor + "        - drlx/report.py\n", 1)
        expect = "-        - drlx/report.py\n"
    path.write_text(text)
    diffs = check(root, ["dvc.yaml"])
    assert len(diffs) == 1 and expect in diffs[0]
    assert path.read_text() == text  # check writes nothing


def test_cli_deps_check_and_write(tmp_path, monkeypatch):
    """`drlx deps --check`: exit 1 with the diff and the hint when stale, writing nothing;
    `drlx deps` rewrites; then `--check` exits 0."""
    from drlx.cli import app

    root = _repo_copy(tmp_path)
    for name in stage_deps.DVC_FILES:
        (root / name).write_text(render(root / name, root))
    line = "        - drlx/io.py\n"
    current = (root / "dvc.yaml").read_text()
    assert line in current
    stale = current.replace(line, "        - drlx\n")
    (root / "dvc.yaml").write_text(stale)
    monkeypatch.chdir(root / "stages/paper")  # the root is found above this folder's dvc.yaml
    runner = CliRunner()
    result = runner.invoke(app, ["deps", "--check"])
    assert result.exit_code == 1, result.output
    assert "+++ dvc.yaml (drlx deps)" in result.output and "-        - drlx\n" in result.output
    assert "run `drlx deps`" in result.output
    assert (root / "dvc.yaml").read_text() == stale
    result = runner.invoke(app, ["deps"])
    assert result.exit_code == 0 and "rewrote dvc.yaml" in result.output, result.output
    assert (root / "dvc.yaml").read_text() == current
    result = runner.invoke(app, ["deps", "--check"])
    assert result.exit_code == 0, result.output


def test_report_and_audit_are_no_stage_dep():
    """Editing the report or the audit retrains nothing."""
    for path in DVC_FILES:
        for name, body in _stage_bodies(render(path, ROOT)).items():
            deps = body["deps"]
            script = next(
                d
                for d in deps
                if d.startswith("stages/") and d.endswith(".py") and d != "stages/common.py"
            )
            for module in ("drlx/report.py", "drlx/audit.py", "drlx/cli.py"):
                # the import chain is traced for the message only, i.e. when the check fails
                assert module not in deps, f"{path.name}:{name}: " + " -> ".join(
                    import_chain(Path(script), Path(module), ROOT) or []
                )


_LOADED = """
import json, sys
from pathlib import Path
root, prefix = Path.cwd().resolve(), Path(sys.prefix).resolve()
sys.path.insert(0, str(root / "stages"))
import {module}
files = set()
for mod in list(sys.modules.values()):
    file = getattr(mod, "__file__", None)
    if file:
        path = Path(file).resolve()
        if path.is_relative_to(root) and not path.is_relative_to(prefix):
            files.add(path.relative_to(root).as_posix())
print(json.dumps(sorted(files)))
"""


@pytest.mark.slow
def test_static_deps_cover_what_python_imports():
    """Importing a real stage (its `main` runs only as __main__) loads only files its code deps
    list: the static set may be larger (function-level imports), never smaller."""
    result = subprocess.run(
        [sys.executable, "-c", _LOADED.format(module="train")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"stages/train.py", "stages/common.py", "drlx/__init__.py"} <= loaded
    static = set(code_deps(Path("stages/train.py"), ROOT))
    assert loaded <= static, sorted(loaded - static)
