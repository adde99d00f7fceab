"""Build drlx/ops/_lib/_onednn_conv.so, oneDNN's convolutions as XLA FFI handlers.

Usage: python -m drlx.ops.build [--force]   (the Makefile's environment step runs it)

Compiles onednn_conv.cc with g++ against JAX's FFI headers (jax.ffi.include_dir()) and the
oneDNN package of this environment (onednn-devel-cpu-gomp: sys.prefix/include, onednn-cpu-gomp:
sys.prefix/lib/libdnnl.so.3), only when the source is newer than the library. A failure never
fails the set-up: it prints one line and leaves its reason in `_lib/_onednn_conv.build-error`,
which drlx.ops.conv.load() reports (the convolutions then run on XLA's own kernels).

The library lives in `_lib/`, a folder that is not a Python package: a *.so file in drlx/ops
itself would be listed (pkgutil) and imported as an extension module.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "onednn_conv.cc"
LIBRARY = HERE / "_lib" / "_onednn_conv.so"
ERROR_FILE = HERE / "_lib" / "_onednn_conv.build-error"


def command(output: Path) -> list[str]:
    """The g++ command line that builds `output` from SOURCE."""
    import jax

    prefix = Path(sys.prefix)
    return [
        os.environ.get("CXX", "g++"),
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-isystem", jax.ffi.include_dir(),
        "-isystem", str(prefix / "include"),
        str(SOURCE),
        "-o", str(output),
        "-L", str(prefix / "lib"),
        "-ldnnl",
        f"-Wl,-rpath,{prefix / 'lib'}",
    ]  # fmt: skip


def up_to_date() -> bool:
    return LIBRARY.exists() and LIBRARY.stat().st_mtime >= SOURCE.stat().st_mtime


def _fail(reason: str) -> int:
    ERROR_FILE.parent.mkdir(exist_ok=True)
    ERROR_FILE.write_text(reason + "\n")
    print(f"drlx.ops.build: oneDNN convolutions not built ({reason}); XLA's are used", flush=True)
    return 0


def build(force: bool = False) -> int:
    """Build if needed; 0 in every case (a failure is reported, not raised)."""
    if not force and up_to_date():
        ERROR_FILE.unlink(missing_ok=True)
        return 0
    try:
        prefix = Path(sys.prefix)
        if not (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
            return _fail(f"no oneDNN headers in {prefix / 'include'} (onednn-devel-cpu-gomp)")
        if not list((prefix / "lib").glob("libdnnl.so*")):
            return _fail(f"no libdnnl.so in {prefix / 'lib'} (onednn-cpu-gomp)")
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            return _fail(f"no C++ compiler ({cxx}) on PATH")
        LIBRARY.parent.mkdir(exist_ok=True)
        tmp = LIBRARY.with_suffix(".so.tmp")
        done = subprocess.run(command(tmp), capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line]
            first = errors[0] if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
            return _fail(f"{cxx} failed: {first}")
        tmp.replace(LIBRARY)  # atomic: a running process never sees half a library
    except Exception as err:  # noqa: BLE001 - the set-up must go on whatever happened
        return _fail(f"{type(err).__name__}: {err}")
    ERROR_FILE.unlink(missing_ok=True)
    print(f"drlx.ops.build: built {LIBRARY.name}", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sys.exit(build(parser.parse_args().force))


if __name__ == "__main__":
    main()
