"""What a spec compiles to (drlx/builder.py): the objects and the typed settings of every engine.

Engines take an `Experiment` or its parts, never the spec; this module imports no spec code.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optax
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.cooperative import Proposal
from drlx.data.conditions import Conditioning
from drlx.data.sources import DataSource
from drlx.diffusion import Schedule
from drlx.energy import ConditionalEBM
from drlx.io import load_model
from drlx.keys import named_key
from drlx.models.base import AbstractEnergyNetwork, AbstractInitializer
from drlx.samplers.base import AbstractSampler
from drlx.settings import (
    DensitySettings,
    EvaluateSettings,
    LongRunSettings,
    RuntimeSettings,
    TaskSettings,
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
        optimizer: the energy network's optimizer.
        make_initializer: key -> a freshly initialised CDRL initializer (None: DRL).
        initializer_optimizer: the initializer's optimizer (None: DRL).
        proposal_std: v_t, the spread of the initializer's proposal of each level (None: DRL).
        tweedie: generation ends with Tweedie's denoising step.
        train_sampler, eval_sampler: the chains of training and of generation / evaluation.
        train, evaluate, density, long_run, runtime: the engines' settings.
        conditioning: what the models are conditioned on (None: unconditional).
        tasks: guided and composed generation after training (None: none).
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
    make_initializer: Callable[[PRNGKeyArray], AbstractInitializer] | None
    initializer_optimizer: optax.GradientTransformation | None
    proposal_std: Float[Array, " T"] | None
    tweedie: bool
    train_sampler: AbstractSampler
    eval_sampler: AbstractSampler
    train: TrainSettings
    evaluate: EvaluateSettings
    density: DensitySettings
    long_run: LongRunSettings
    runtime: RuntimeSettings
    conditioning: Conditioning | None = None
    tasks: TaskSettings | None = None

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

    def init_initializer(self) -> AbstractInitializer | None:
        """CDRL's initializer at its initialisation (stream "init-initializer"); None for DRL."""
        if self.make_initializer is None:
            return None
        return self.make_initializer(key=self.key("init-initializer"))

    def load_model(
        self, path: str | Path
    ) -> tuple[AbstractEnergyNetwork, AbstractInitializer | None]:
        """Trained weights saved by the train stage (model.eqx): the energy network and, for
        CDRL, the initializer (None for DRL)."""
        return load_model(path, (self.init_network(), self.init_initializer()))

    def ebm(
        self, network: AbstractEnergyNetwork, initializer: AbstractInitializer | None = None
    ) -> ConditionalEBM:
        """The conditional EBMs of every level built on `network`; with an initializer their
        chains start at its proposal (CDRL), else at the tether (DRL)."""
        proposal = None if initializer is None else Proposal(initializer, self.proposal_std)
        return ConditionalEBM(network, self.schedule, self.step_sq, self.g_scale, proposal)
