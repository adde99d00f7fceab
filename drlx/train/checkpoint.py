"""Checkpoints with Orbax: everything needed to continue a run bit for bit.

A checkpoint holds the train state's arrays (network, EMA, optimizer, spectral-norm vectors, step),
the data iterator's state, the loss history, the training key and a SHA-256 of the arrays. On
restore the newest checkpoint that reads back whole (and matches its checksum) wins; a truncated
or corrupt one is reported and skipped. Checkpoints of another spec live in another folder
(named by the spec's training hash), so a spec edited in anything training reads never
resumes a stale run.

A run can be killed at any moment (SIGKILL, a preempted machine), so no moment may leave the
folder in a state Orbax trips over when the run resumes:
- mid-save: Orbax writes a step as `<step>.orbax-checkpoint-tmp` and renames it when complete;
  a leftover is removed when the next run opens the folder (`cleanup_tmp_directories`). Left
  alone, Orbax warns "Attempted to create temporary directory ... which already exists" when
  the resumed run reaches that step again.
- mid-delete: Orbax drops the oldest step (`max_to_keep`) by unlinking its files one by one, and
  a kill there left a `<step>` folder without its files, which Orbax still lists as a finished
  step (with atomic renames the name alone says "complete"): it then warned "Metadata file does
  not exist: .../<step>/_CHECKPOINT_METADATA", and restore had one more broken step to skip.
  Now Orbax only renames a dropped step into `TRASH` (atomic: the step is whole or gone), which
  is emptied after every save and when the folder is opened. A step folder without Orbax's
  completion files (from a kill before this scheme) is removed when the folder is opened.

On several processes (after `jax.distributed.initialize()`) the folder must be one that every
host sees (a shared filesystem), and every process makes the same calls in the same order.
Orbax's primary host (process 0) writes the arrays and the metadata, renames and drops steps;
our own clean-up of the folder (incomplete steps, `TRASH`) is done by process 0 too, and the
others wait for it (a barrier) before Orbax lists the steps, so all of them see the same ones.
The arrays are gathered whole on every host first (`to_host`: a replicated state is already
whole), so every process computes the same checksum and restores the same state from the
shared folder. Tested with two processes in tests/test_multihost.py.
"""

import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PRNGKeyArray

from drlx.errors import CheckpointError
from drlx.sharding import barrier, is_primary, to_host
from drlx.train.step import TrainState

# a sub-folder of the checkpoint folder where Orbax moves the steps it drops; emptied by us
TRASH = "dropped"
# files Orbax (0.12) writes into a step before renaming it into place: a step folder missing
# one of them was cut short by a kill while it was being deleted
COMPLETE_MARKERS = ("_CHECKPOINT_METADATA", "commit_success.txt")


def _arrays(state: TrainState) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(eqx.filter(state, eqx.is_array))
    return {f"{i:05d}": to_host(leaf) for i, leaf in enumerate(leaves)}


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
        self.trash = self.directory / TRASH
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,  # saves cut short by a kill
            todelete_subdir=TRASH,  # drop a step by one atomic rename
        )
        try:
            try:
                if is_primary():
                    self._remove_incomplete_steps()
                    self._empty_trash()
            finally:  # the others list the steps only once the primary is done (or failed)
                barrier("drlx checkpoint folder cleaned")
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:  # a file where the folder should be, no permission, ...
            raise CheckpointError(
                f"{self.directory}: cannot hold checkpoints ({type(err).__name__}: {err})"
            ) from None

    def _remove_incomplete_steps(self) -> None:
        """Delete step folders that lack Orbax's completion files (see the module docstring)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            complete = all((path / marker).is_file() for marker in COMPLETE_MARKERS)
            if path.name.isdigit() and path.is_dir() and not complete:
                shutil.rmtree(path)

    def _empty_trash(self) -> None:
        if self.trash.is_dir():
            shutil.rmtree(self.trash)

    def save(
        self, state: TrainState, data_state: dict, history: list[dict], key: PRNGKeyArray
    ) -> None:
        """Write a checkpoint at the state's step (atomically: Orbax renames when complete).

        A checkpoint already at that step is one `restore` skipped as unusable (a run resumes
        from the newest usable one): it is replaced."""
        step = int(state.step)
        if step in self.manager.all_steps():
            self.manager.delete(step)
        arrays = _arrays(state)
        meta = {
            "step": step,
            "data_state": data_state,
            "history": history,
            "key": np.asarray(jax.random.key_data(key)).tolist(),
            "sha256": _digest(arrays),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        if is_primary():
            self._empty_trash()  # the steps this save made Orbax drop

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
