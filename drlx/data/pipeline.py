"""Grain pipelines that turn an in-memory array into endless, shuffled, deterministic batches."""

from collections.abc import Iterator

import grain
import numpy as np


def batch_iterator(array: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Shuffle (again each epoch) and batch an array forever, the order fixed by `seed`.

    Arguments:
        array: examples along the first axis.
        batch_size: examples per batch (the last partial batch of an epoch is dropped).
        seed: shuffling seed.

    Returns:
        A Grain dataset iterator; its `get_state()`/`set_state()` allow exact resumption.
    """
    if len(array) < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the {len(array)} training examples")
    dataset = grain.MapDataset.source(array).seed(seed).shuffle().repeat()
    return iter(dataset.batch(batch_size, drop_remainder=True).to_iter_dataset())
