"""Helper for test_sharding.py: train and sample on 1 and on 4 simulated CPU devices.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=4; prints JSON with the
largest differences between the two runs.
"""

import json
import sys

import equinox as eqx
import jax
import numpy as np

from drlx.builder import build
from drlx.guidance import compose
from drlx.samplers.many import sample_many
from drlx.sharding import make_mesh
from drlx.spec import load_spec
from drlx.train.fit import fit


def run(spec_path: str, devices: int):
    spec = load_spec(spec_path)
    spec = spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"devices": devices})})
    exp = build(spec)
    train = np.random.default_rng(0).normal(size=(512, 2)).astype(np.float32) * 0.5
    cond, conditions, guide = exp.conditioning, None, None
    if cond is not None:  # attributes of the points; samples composed (both attributes = 1)
        conditions = cond.values({"train": train}, "train")
        guide = compose([np.array([1, 2]), np.array([2, 1])], [1.5, 1.0], cond.null, 64)
    state, history = fit(exp, train, progress=False, conditions=conditions)
    samples = sample_many(
        exp.ebm(state.ema, state.initializer_ema), exp.eval_sampler, exp.key("sample"), 64,
        exp.shape, 32, progress=False, mesh=make_mesh(devices), guide=guide,
    )  # fmt: skip
    # both models (the initializer is None for DRL), their EMAs and optimizer states
    leaves = jax.tree.leaves(eqx.filter(state, eqx.is_inexact_array))
    return [np.asarray(x) for x in leaves], samples, [h["loss"] for h in history]


if __name__ == "__main__":
    assert len(jax.devices()) == 4, jax.devices()
    p1, s1, l1 = run(sys.argv[1], 1)
    p4, s4, l4 = run(sys.argv[1], 4)
    print(
        json.dumps(
            {
                "param_diff": max(
                    float(np.max(np.abs(a - b))) for a, b in zip(p1, p4, strict=True)
                ),
                "param_scale": max(float(np.max(np.abs(a))) for a in p1),
                "sample_diff": float(np.max(np.abs(s1 - s4))),
                "loss_diff": float(np.max(np.abs(np.subtract(l1, l4)))),
            }
        )
    )
