"""The package's structure, checked from its imports: engines never import the spec package
(only drlx/builder.py turns a spec into objects), no module reaches into another's private
names, and the public API names what it says."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drlx.stage_deps import code_deps, import_chain

ROOT = Path(__file__).resolve().parents[1]
# the engines: what a spec compiles to and everything that computes with it
ENGINES = [
    "drlx/diffusion.py",
    "drlx/energy.py",
    "drlx/objective.py",
    "drlx/experiment.py",
    "drlx/settings.py",
    *(f"drlx/{pkg}" for pkg in ("samplers", "train", "density", "evaluate", "data", "models")),
]


def engine_files(root: Path) -> list[Path]:
    files = []
    for entry in ENGINES:
        path = root / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def spec_imports(root: Path) -> dict[str, list[str]]:
    """Engine module -> the import chain by which it reaches the spec package or builder.py."""
    found = {}
    for path in engine_files(root):
        for dep in code_deps(path, root):
            if dep.startswith("drlx/spec/") or dep == "drlx/builder.py":
                found[str(path.relative_to(root))] = import_chain(path, root / dep, root)
                break
    return found


def test_engines_never_import_the_spec():
    assert len(engine_files(ROOT)) > 30
    assert spec_imports(ROOT) == {}


def test_engine_import_check_can_fail(tmp_path):
    """An engine that imports the spec, even through another module and inside a function, is
    named with its import chain."""
    shutil.copytree(ROOT / "drlx", tmp_path / "drlx", ignore=shutil.ignore_patterns("__pycache__"))
    keys = tmp_path / "drlx/keys.py"
    keys.write_text(keys.read_text() + "\n\ndef late():\n    from drlx.spec import load_spec\n")
    found = spec_imports(tmp_path)
    assert "drlx/energy.py" in found and "drlx/keys.py" in found["drlx/energy.py"]
    assert found["drlx/energy.py"][-1].startswith("drlx/spec/")


def private_uses(root: Path) -> list[str]:
    """`from drlx.x import _name` or `module._name` of a drlx module, outside that module."""
    bad = []
    for path in sorted((root / "drlx").rglob("*.py")) + sorted((root / "stages").rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}  # local name -> drlx module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drlx"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{path.relative_to(root)}: imports {alias.name}")
                    modules[alias.asname or alias.name] = node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("drlx"):
                        modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr != "_replace"  # NamedTuple's public method
            ):
                owner = ast.unparse(node.value)
                if owner in modules or isinstance(node.value, ast.Name) and owner != "os":
                    bad.append(f"{path.relative_to(root)}:{node.lineno}: {owner}.{node.attr}")
    return bad


def test_no_module_uses_another_modules_private_names(tmp_path):
    assert private_uses(ROOT) == []
    shutil.copytree(ROOT / "drlx", tmp_path / "drlx", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stages").mkdir()
    quad = tmp_path / "drlx/density/quadrature.py"
    quad.write_text(quad.read_text().replace("ebm.log_prob_in_context(", "ebm._log_prob("))
    assert any("ebm._log_prob" in p for p in private_uses(tmp_path))


def test_public_api_names_resolve_and_import_lazily():
    """Every name of drlx.__all__ resolves; `import drlx` alone loads no engine (so a stage's
    dependencies are the modules it imports, not the whole API)."""
    code = (
        "import sys, drlx\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('drlx'))\n"
        "print(loaded)\n"
        "assert loaded == ['drlx', 'drlx._xla'], loaded\n"
        "for name in drlx.__all__:\n"
        "    assert getattr(drlx, name) is not None, name\n"
        "assert 'drlx.train.fit' in sys.modules\n"
        # importing a submodule sets it as an attribute of the package: no API name may be one
        "import importlib, pkgutil, types\n"
        "for m in pkgutil.walk_packages(drlx.__path__, 'drlx.'):\n"
        "    importlib.import_module(m.name)\n"
        "for name in drlx.__all__:\n"
        "    assert not isinstance(getattr(drlx, name), types.ModuleType), name\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        import drlx

        drlx.fitt  # noqa: B018
