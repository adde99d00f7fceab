"""XLA:CPU flags drlx sets before JAX starts its backend (on import of drlx).

`--xla_cpu_experimental_ynn_fusion_type=dot` lets XLA:CPU run 32- and 64-channel convolutions on
all cores; without it they ran on one (benchmarks/bench_network.py: width-32 CIFAR network 442
vs 259 sample-steps/s on this 2-core CPU). It changes float32 results by ~1e-6, so every entry
point (stages, tests, notebooks) gets it, for the same numbers everywhere. XLA reads XLA_FLAGS
when the backend starts (first computation), so importing drlx after jax still works as long as
nothing has run yet. Set DRLX_XLA_DEFAULTS=0 to leave XLA_FLAGS alone.
"""

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)


def add_default_flags() -> None:
    """Append CPU_FLAGS to XLA_FLAGS, unless the user opted out or already set them."""
    if os.environ.get("DRLX_XLA_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    flags += [f for f in CPU_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)
