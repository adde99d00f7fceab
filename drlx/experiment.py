"""What a spec compiles to (drlx/build.py): the objects and the typed settings of every engine.

Engines take an `Experiment` or its parts, never the spec; this module imports no spec code.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optax
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.data.sources import DataSource
from drlx.diffusion import Schedule
from drlx.energy import ConditionalEBM
from drlx.io import load_model
from drlx.keys import named_key
from drlx.models.base import AbstractEnergyNetwork
from drlx.samplers.base import AbstractSampler
from drlx.settings import (
    DensitySettings,
    EvaluateSettings,
    LongRunSettings,
    RuntimeSettings,
    TrainSettings,
)


@dataclass(frozen=True)
class Experiment:
    """One compiled experiment.

    Attributes:
        name: the experiment's name.
        scientific_hash: hash of everything that can change a result (written into metrics).
        training_hash: hash of what training depends on (names the checkpoint folder).
        seed: the experiment seed (data splits and order, dequantization).
        root_key: every random stream is `key(name)`, folded from this key.
        data: the data source (shape of an example, flips, splits).
        schedule: the noise schedule.
        step_sq: Langevin step size s_t^2 of each level.
        g_scale: output scale k_t of each level (f = g / k_t).
        weights: loss weight w_t of each level.
        make_network: key -> a freshly initialised energy network.
        optimizer: the training optimizer.
        train_sampler, eval_sampler: the chains of training and of generation / evaluation.
        train, evaluate, density, long_run, runtime: the engines' settings.
    """

    name: str
    scientific_hash: str
    training_hash: str
    seed: int
    root_key: PRNGKeyArray
    data: DataSource
    schedule: Schedule
    step_sq: Float[Array, " T"]
    g_scale: Float[Array, " T"]
    weights: Float[Array, " T"]
    make_network: Callable[[PRNGKeyArray], AbstractEnergyNetwork]
    optimizer: optax.GradientTransformation
    train_sampler: AbstractSampler
    eval_sampler: AbstractSampler
    train: TrainSettings
    evaluate: EvaluateSettings
    density: DensitySettings
    long_run: LongRunSettings
    runtime: RuntimeSettings

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return self.data.shape

    def key(self, name: str) -> PRNGKeyArray:
        """The random stream `name` of this experiment."""
        return named_key(self.root_key, name)

    def init_network(self) -> AbstractEnergyNetwork:
        """The energy network at its initialisation (its random stream is "init")."""
        return self.make_network(self.key("init"))

    def load_network(self, path: str | Path) -> AbstractEnergyNetwork:
        """Trained weights saved by `drlx.save_model` (the train stage's model.eqx)."""
        return load_model(path, self.init_network())

    def ebm(self, network: AbstractEnergyNetwork) -> ConditionalEBM:
        """The conditional EBMs of every level built on `network`."""
        return ConditionalEBM(network, self.schedule, self.step_sq, self.g_scale)
