"""What importing drlx sets for the process (drlx/_xla.py): the allocator keeps XLA's temporary
buffers mapped between executions, so a repeated jitted call touches no fresh pages; opting out
restores glibc's behaviour, under which it does; numbers are the same either way."""

import os
import platform
import subprocess
import sys

import pytest

# A jitted function with a 64 MiB temporary that XLA allocates at every call; prints the pages
# the fourth call faulted in, in units of that temporary, and a checksum of its result.
PROGRAM = """
import resource
import drlx  # noqa: F401  (applies the process defaults)
import jax, jax.numpy as jnp
import numpy as np

@jax.jit
def f(x, w1, w2):
    return jnp.tanh(x @ w1) @ w2  # x @ w1: a 64 MiB temporary (above glibc's mmap threshold)

rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((8192, 256)), jnp.float32)
w1 = jnp.asarray(rng.standard_normal((256, 2048)) / 16, jnp.float32)
w2 = jnp.asarray(rng.standard_normal((2048, 8)), jnp.float32)
temporary_bytes = 8192 * 2048 * 4
for _ in range(3):
    jax.block_until_ready(f(x, w1, w2))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = jax.block_until_ready(f(x, w1, w2))
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
faults = (after - before) * resource.getpagesize() / temporary_bytes
print(faults, np.asarray(y).tobytes().hex()[:64])
"""


def _run(opt_out: bool) -> tuple[float, str]:
    env = {"DRLX_MALLOC_DEFAULTS": "0"} if opt_out else {"DRLX_MALLOC_DEFAULTS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    faults, checksum = done.stdout.split()
    return float(faults), checksum


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's",
)
def test_repeated_call_reuses_mapped_memory_and_numbers_do_not_change():
    tuned_faults, tuned_sum = _run(opt_out=False)
    plain_faults, plain_sum = _run(opt_out=True)
    # glibc's default: the temporary comes back as fresh pages at every call
    assert plain_faults > 0.9, plain_faults
    # drlx's: a call reuses the pages of the calls before it
    assert tuned_faults < 0.1, tuned_faults
    assert tuned_sum == plain_sum


def test_opt_out_does_nothing(monkeypatch):
    from drlx import _xla

    monkeypatch.setenv("DRLX_MALLOC_DEFAULTS", "0")
    assert _xla.set_malloc_defaults() is False
