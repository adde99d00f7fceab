"""The whole experiment: one spec block per concern, and its scientific hash."""

import hashlib
import json

from pydantic import Field, PrivateAttr

from drlx.spec.base import Block
from drlx.spec.condition import Condition
from drlx.spec.data import DataSpec
from drlx.spec.density import Density
from drlx.spec.diffusion import DiffusionSpec
from drlx.spec.evaluate import Evaluate
from drlx.spec.initializer import InitializerSpec
from drlx.spec.model import ModelSpec
from drlx.spec.runtime import Runtime
from drlx.spec.sampler import SamplerSpec
from drlx.spec.tasks import Tasks
from drlx.spec.train import Objective, Train


class ExperimentSpec(Block):
    """One experiment, as written in specs/NAME.yaml (after merging its base, if any)."""

    # names files and folders: at most 128 characters (file names stop at 255)
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=128)
    # at most 2**32 - 1, the range of a 32-bit seed (jax.random.key overflows past 2**63 - 1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataSpec
    diffusion: DiffusionSpec
    model: ModelSpec
    sampler: SamplerSpec
    # CDRL's initializer; absent (DRL), every chain starts at its tether
    initializer: InitializerSpec | None = None
    # class or attribute conditioning with null-token dropout; absent: unconditional models
    condition: Condition | None = None
    # guided and composed generation after training (a conditional model); absent: none
    tasks: Tasks | None = None
    objective: Objective = Objective()
    train: Train = Train()
    density: Density = Density()
    evaluate: Evaluate = Evaluate()
    runtime: Runtime = Runtime()
    # where each field was written ("file:line" by field path), filled by load_spec; not a field,
    # so neither hashed nor dumped: checks made after validation (drlx.builder) locate with it
    _lines: dict = PrivateAttr(default_factory=dict)

    def __eq__(self, other) -> bool:
        """Equal fields are equal specs, wherever they were written (`_lines` not compared)."""
        if not isinstance(other, ExperimentSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    def set_lines(self, lines: dict[tuple, str]) -> None:
        """Record where each field was written (`load_spec` does)."""
        self._lines = dict(lines)

    def line_of(self, *path: str) -> str:
        """ "file:line" of a field as loaded (its nearest written ancestor), or "<spec>"."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._lines:
                return self._lines[path[:end]]
        return "<spec>"

    def scientific_dict(self) -> dict:
        """Every field that can change a result: all but the runtime block."""
        return _dump(self, {"runtime"})

    def scientific_hash(self) -> str:
        """SHA-256 of the canonical JSON of the scientific part (sorted keys, no spaces)."""
        return _sha256(self.scientific_dict())

    def training_hash(self) -> str:
        """SHA-256 of what training depends on: the scientific part without the blocks read
        only after training (density, evaluate, tasks). Names the checkpoint folder, so
        changing how a trained model is evaluated does not retrain it."""
        return _sha256(_dump(self, {"runtime", "density", "evaluate", "tasks"}))


# Fields added after results were published, left out of the dump (hence the hashes) while unset,
# so that every earlier spec keeps its hashes (and its checkpoints and audited records).
LATER_OPTIONAL = (
    ("condition",),
    ("tasks",),
    ("tasks", "chain"),
    ("data", "num_classes"),
    ("train", "dequantize"),
)


def _dump(spec: ExperimentSpec, exclude: set[str]) -> dict:
    tree = spec.model_dump(mode="json", exclude=exclude)
    for *parents, name in LATER_OPTIONAL:
        node = tree
        for key in parents:
            node = node.get(key, {})
        if name in node and node[name] is None:
            del node[name]
    return tree


def _sha256(tree: dict) -> str:
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
