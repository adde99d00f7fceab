"""The same numbers on 1 and on 4 (simulated) devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import INITIALIZER, tiny_toy_spec

from drlx.sharding import make_mesh

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["drl", "cdrl", "conditional"])
def test_one_and_four_devices_agree(tmp_path: Path, kind: str):
    """Training and sampling; `conditional`: attribute-conditional CDRL, its batches carrying
    conditions and its samples composed (docs/method.md §12)."""
    extra = {"initializer": INITIALIZER} if kind != "drl" else {}
    if kind == "conditional":
        attributes = ["right_half", "upper_half"]
        extra["condition"] = {"on": "attributes", "attributes": attributes, "p_uncond": 0.5}
    spec = tiny_toy_spec(
        tmp_path / "shard.yaml", "shard", data={"num_train": 600, "num_heldout": 100},
        sampler={"num_steps": 8},
        train={"num_steps": 20, "batch_size": 64, "log_every": 5, "warmup_steps": 5}, **extra,
    )  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/sharded_run.py"), str(spec)],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    diff = json.loads(out.stdout.strip().splitlines()[-1])
    # Only the order of floating-point reductions (batch means, gradient sums) may differ.
    assert diff["loss_diff"] <= 1e-5
    assert diff["param_diff"] <= 1e-5 * max(1.0, diff["param_scale"])
    assert diff["sample_diff"] <= 1e-5


def test_mesh_rejects_more_devices_than_visible():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        make_mesh(10_000)
