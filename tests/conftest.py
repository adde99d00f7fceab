"""Shared fixtures.

Strict dtype promotion (`jax_numpy_dtype_promotion = "strict"`) is deliberately left off: drlx's
own code runs under it (schedules, q_sample_pair, the chains, generate), but a training step with
the Adam optimizer that drlx builds fails inside optax (its bias correction raises a Python float
to an int32 count: TypePromotionError raised from drlx/train/step.py, `optimizer.update`).
"""

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)
