"""Process settings drlx makes on import, before JAX starts its backend: XLA:CPU flags and the
C library's allocator.

XLA flags. `--xla_cpu_experimental_ynn_fusion_type=dot` lets XLA:CPU run 32- and 64-channel
convolutions on all cores; without it they ran on one (benchmarks/bench_network.py: width-32
CIFAR network 442 vs 259 sample-steps/s on this 2-core CPU). It changes float32 results by ~1e-6,
so every entry point (stages, tests, notebooks) gets it, for the same numbers everywhere. XLA
reads XLA_FLAGS when the backend starts (first computation), so importing drlx after jax still
works as long as nothing has run yet. Set DRLX_XLA_DEFAULTS=0 to leave XLA_FLAGS alone.

Allocator. XLA:CPU allocates an executable's temporary buffers (every activation a training step
keeps for its backward pass: 234 MB for the width-32 CIFAR network's step at batch 64) afresh at
each execution, with posix_memalign from one of its worker threads. glibc serves a request that
large from a thread's arena by mmap and returns it by munmap at the end, so every step touches
fresh pages: ~58,000 page faults, each a zeroed 4 KiB page, per step. `set_malloc_defaults` keeps
such blocks in the process: one arena (M_ARENA_MAX 1: the main heap, which can grow without mmap),
no mmap for large blocks (M_MMAP_MAX 0), and no trimming of the heap's free top (M_TRIM_THRESHOLD
maximal); the next step reuses the same, already mapped pages (width-32 CIFAR training step
1.2-1.3x faster here, ~0 faults per step; benchmarks/results/network.json). Numbers do not change
(where a buffer lives is not what is computed); the process keeps its peak memory mapped until it
exits. glibc only (elsewhere nothing is done); arenas that threads made before the call keep
their old behaviour, so it must run before JAX starts. DRLX_MALLOC_DEFAULTS=0 opts out.
"""

import ctypes
import ctypes.util
import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)

# glibc's mallopt parameters (malloc.h) and the values drlx sets
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOC_DEFAULTS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def add_default_flags() -> None:
    """Append CPU_FLAGS to XLA_FLAGS, unless the user opted out or already set them."""
    if os.environ.get("DRLX_XLA_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    flags += [f for f in CPU_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def set_malloc_defaults() -> bool:
    """Apply MALLOC_DEFAULTS through glibc's mallopt (see the module's doc). True if applied;
    False if opted out (DRLX_MALLOC_DEFAULTS=0) or the C library is not glibc."""
    if os.environ.get("DRLX_MALLOC_DEFAULTS", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    del version  # present only in glibc, whose mallopt takes these parameters
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_DEFAULTS)
