"""The one place where a spec becomes objects: an explicit `match` on each block's kind."""

import math
from dataclasses import dataclass

import diffrax
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

from drlx.diffusion import (
    Schedule,
    cosine_logsnr_schedule,
    drl_linear_schedule,
    linear_schedule,
)
from drlx.energy import ConditionalEBM
from drlx.keys import named_key
from drlx.models import MLPEnergy, ResNetEnergy
from drlx.samplers import MALA, ULA, Sampler, Underdamped
from drlx.spec import data as data_spec
from drlx.spec import diffusion as diffusion_spec
from drlx.spec import model as model_spec
from drlx.spec import sampler as sampler_spec
from drlx.spec.experiment import ExperimentSpec
from drlx.spec.train import Train


def build_schedule(spec: diffusion_spec.DiffusionSpec) -> Schedule:
    match spec:
        case diffusion_spec.DRLLinear():
            return drl_linear_schedule(
                spec.num_levels, spec.beta_start, spec.beta_end, spec.num_diffusion_steps
            )
        case diffusion_spec.Linear():
            return linear_schedule(
                spec.num_levels, spec.beta_start, spec.beta_end, spec.num_diffusion_steps
            )
        case diffusion_spec.CosineLogSNR():
            return cosine_logsnr_schedule(spec.num_levels, spec.logsnr_min, spec.logsnr_max)
    raise TypeError(f"no schedule for {spec!r}")


def data_shape(spec: data_spec.DataSpec) -> tuple[int, ...]:
    match spec:
        case data_spec.Toy2DData():
            return (2,)
        case data_spec.DigitsData():
            return (8, 8, 1)
        case data_spec.Cifar10Data():
            return (32, 32, 3)
        case data_spec.ImageFolderData():
            return (spec.size, spec.size, 3)
        case data_spec.NpzData():
            return tuple(spec.shape)  # stated in the spec; prepare checks it against the file
    raise TypeError(f"no data shape for {spec!r}")


def data_flip(spec: data_spec.DataSpec) -> bool:
    """Whether training batches get random left-right flips (images only)."""
    match spec:
        case data_spec.Toy2DData():
            return False
        case _:
            return spec.flip


def build_network(spec: model_spec.ModelSpec, shape: tuple[int, ...], key: PRNGKeyArray):
    match spec:
        case model_spec.MLPEnergy():
            dim = math.prod(shape)
            return MLPEnergy(
                dim,
                spec.width,
                spec.depth,
                spec.embed_dim,
                spec.activation,
                spec.fourier_features,
                spec.fourier_scale,
                key=key,
            )
        case model_spec.ResNetEnergy():
            _, _, channels = shape
            return ResNetEnergy(
                channels,
                spec.width,
                spec.blocks_per_resolution,
                spec.channel_mults,
                spec.embed_dim,
                spec.spectral_norm,
                key=key,
            )
    raise TypeError(f"no network for {spec!r}")


def build_sampler(spec: sampler_spec.SamplerSpec, training: bool) -> Sampler:
    match spec:
        case sampler_spec.ULA():
            noise = spec.noise_scale_train if training else spec.noise_scale_eval
            return ULA(spec.num_steps, noise)
        case sampler_spec.MALA():
            return MALA(spec.num_steps)
        case sampler_spec.Underdamped():
            noise = spec.noise_scale_train if training else spec.noise_scale_eval
            match spec.solver:
                case "align":
                    solver = diffrax.ALIGN()
                case "quicsort":
                    solver = diffrax.QUICSORT()
                case "should":
                    solver = diffrax.ShOULD()
            random_velocity = spec.initial_velocity == "stationary"
            return Underdamped(spec.num_steps, spec.friction, noise, random_velocity, solver)
    raise TypeError(f"no sampler for {spec!r}")


def loss_weights(weighting: str, schedule: Schedule, g_scale: Array) -> Array:
    """Per-level weights w_t of the recovery-likelihood terms (see spec.train.Objective)."""
    match weighting:
        case "drl":
            return schedule.sigma[1] / schedule.sigma[1:]
        case "likelihood":
            return g_scale[0] / g_scale
        case "uniform":
            return jnp.ones_like(g_scale)
    raise ValueError(f"unknown weighting {weighting!r}")


def build_optimizer(spec: Train) -> optax.GradientTransformation:
    """Adam with a linear warm-up from 0 to the learning rate, then constant (the paper's) or a
    cosine decay to zero at num_steps (`lr_schedule: cosine`); no clipping."""
    warmup = max(spec.warmup_steps, 1)
    match spec.lr_schedule:
        case "constant":
            lr = optax.linear_schedule(0.0, spec.learning_rate, warmup)
        case "cosine":
            lr = optax.warmup_cosine_decay_schedule(
                0.0, spec.learning_rate, warmup, max(spec.num_steps, warmup + 1)
            )
    return optax.adam(lr, b1=spec.beta1, b2=spec.beta2)


@dataclass(frozen=True)
class Experiment:
    """What a spec compiles to. Engines take these objects, never the spec."""

    spec: ExperimentSpec
    root_key: PRNGKeyArray
    schedule: Schedule
    shape: tuple[int, ...]
    flip: bool
    step_sq: Array
    g_scale: Array
    weights: Array
    train_sampler: Sampler
    eval_sampler: Sampler
    optimizer: optax.GradientTransformation

    def key(self, name: str) -> PRNGKeyArray:
        return named_key(self.root_key, name)

    def init_network(self):
        return build_network(self.spec.model, self.shape, self.key("init"))

    def ebm(self, network) -> ConditionalEBM:
        return ConditionalEBM(network, self.schedule, self.step_sq, self.g_scale)


def build(spec: ExperimentSpec) -> Experiment:
    """Compile a validated spec into the objects the engines use."""
    schedule = build_schedule(spec.diffusion)
    step_sq = schedule.step_size_sq(spec.sampler.step_size_b2, spec.sampler.step_size_rule)
    match spec.model.output_scale:
        case "step_size":
            g_scale = step_sq
        case "tether_variance":
            g_scale = schedule.sigma[1:] ** 2
    return Experiment(
        spec=spec,
        root_key=jax.random.key(spec.seed),
        schedule=schedule,
        shape=data_shape(spec.data),
        flip=data_flip(spec.data),
        step_sq=step_sq,
        g_scale=g_scale,
        weights=loss_weights(spec.objective.weighting, schedule, g_scale),
        train_sampler=build_sampler(spec.sampler, training=True),
        eval_sampler=build_sampler(spec.sampler, training=False),
        optimizer=build_optimizer(spec.train),
    )
