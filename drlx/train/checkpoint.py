"""Checkpoints with Orbax: everything needed to continue a run bit for bit.

A checkpoint holds the train state's arrays (network, EMA, optimizer, spectral-norm vectors, step),
the data iterator's state, the loss history, the training key and a SHA-256 of the arrays. On
restore the newest checkpoint that reads back whole (and matches its checksum) wins; a truncated
or corrupt one is reported and skipped. Checkpoints of another spec live in another folder
(named by the spec's training hash), so a spec edited in anything training reads never
resumes a stale run.
"""

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PRNGKeyArray

from drlx.train.step import TrainState


def _arrays(state: TrainState) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(eqx.filter(state, eqx.is_array))
    return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(str(arrays[name].dtype).encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


@dataclass
class Resumed:
    """What a restored checkpoint gives back."""

    state: TrainState
    data_state: dict
    history: list[dict]


class Checkpointer:
    """Save and restore training checkpoints in `directory / spec_hash[:16]`."""

    def __init__(self, directory: str | Path, spec_hash: str, max_to_keep: int = 2):
        self.directory = Path(directory).absolute() / spec_hash[:16]
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(
        self, state: TrainState, data_state: dict, history: list[dict], key: PRNGKeyArray
    ) -> None:
        """Write a checkpoint at the state's step (atomically: Orbax renames when complete)."""
        arrays = _arrays(state)
        meta = {
            "step": int(state.step),
            "data_state": data_state,
            "history": history,
            "key": np.asarray(jax.random.key_data(key)).tolist(),
            "sha256": _digest(arrays),
        }
        self.manager.save(
            int(state.step),
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, template: TrainState, key: PRNGKeyArray) -> Resumed | None:
        """The newest readable checkpoint, or None when there is none.

        Arguments:
            template: a freshly initialised state of the same spec (gives the structure).
            key: the run's training key; a checkpoint made with another key is refused.
        """
        params, static = eqx.partition(template, eqx.is_array)
        treedef = jax.tree.structure(params)
        expected_key = np.asarray(jax.random.key_data(key)).tolist()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                got = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                    ),
                )
                arrays = {k: np.asarray(v) for k, v in got["arrays"].items()}
                meta = got["meta"]
                if _digest(arrays) != meta["sha256"]:
                    raise ValueError("arrays do not match their checksum")
                if meta["key"] != expected_key:
                    raise ValueError("made with another training key")
                leaves = [arrays[name] for name in sorted(arrays)]
                if len(leaves) != treedef.num_leaves:
                    raise ValueError(f"{len(leaves)} arrays, expected {treedef.num_leaves}")
                state = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
            except Exception as err:  # truncated, corrupt, or foreign: fall back to an older one
                warnings.warn(
                    f"checkpoint {self.directory / str(step)} is unusable ({err}); "
                    "trying the previous one",
                    stacklevel=2,
                )
                continue
            return Resumed(state, meta["data_state"], meta["history"])
        return None
