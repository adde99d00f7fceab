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


# The longest test files (each a DVC pipeline in a fresh repository, minutes long) are collected
# first, so that `make test`'s workers (pytest-xdist, one file per worker at a time) start them at
# once and fill the rest in around them, instead of meeting them last.
LONG_FILES = ("test_paper_pipeline.py", "test_reproducibility.py", "test_paper_specs.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: the order within and among the other files is kept
