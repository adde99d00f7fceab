"""The one place where a spec becomes objects and typed engine settings: an explicit `match` on
each block's kind. Engines never see the spec; they get what `build` returns."""

import functools
import math
import warnings
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from drlx.cooperative import posterior_std
from drlx.data import sources
from drlx.data.conditions import ATTRIBUTES_OF_KIND, Conditioning
from drlx.diffusion import (
    Schedule,
    continuous_time,
    cosine_logsnr_schedule,
    drl_linear_schedule,
    linear_schedule,
)
from drlx.experiment import Experiment
from drlx.models.base import AbstractEnergyNetwork, AbstractInitializer
from drlx.models.initializer import MLPInitializer
from drlx.models.layers import with_conv_backend, with_random_tables
from drlx.models.mlp import MLPEnergy
from drlx.models.resnet import ResNetEnergy
from drlx.models.unet import UNetInitializer
from drlx.ops.conv import resolve_backend
from drlx.samplers.base import AbstractSampler
from drlx.samplers.mala import MALA
from drlx.samplers.ula import ULA
from drlx.samplers.underdamped import Underdamped
from drlx.settings import (
    AISSettings,
    DensitySettings,
    EvaluateSettings,
    LongRunSettings,
    RuntimeSettings,
    TaskSettings,
    TrainSettings,
)
from drlx.spec import data as data_spec
from drlx.spec import density as density_spec
from drlx.spec import diffusion as diffusion_spec
from drlx.spec import initializer as init_spec
from drlx.spec import model as model_spec
from drlx.spec import sampler as sampler_spec
from drlx.spec.experiment import ExperimentSpec
from drlx.spec.load import SpecError
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


def build_data(spec: data_spec.DataSpec) -> sources.DataSource:
    match spec:
        case data_spec.Toy2DData():
            return sources.Toy2D(spec.name, spec.num_train, spec.num_heldout)
        case data_spec.DigitsData():
            return sources.Digits(spec.num_heldout, spec.flip)
        case data_spec.Cifar10Data():
            return sources.Cifar10(spec.path, spec.flip)
        case data_spec.ImageNet32Data():
            return sources.ImageNet32(spec.path, spec.flip)
        case data_spec.ImageFolderData():
            return sources.ImageFolder(
                spec.path, spec.size, spec.num_heldout, spec.flip, spec.num_classes
            )
        case data_spec.NpzData():
            # the shape is stated in the spec; reading the file checks it
            shape = tuple(spec.shape)
            return sources.Npz(
                spec.path, spec.key, shape, spec.num_heldout, spec.flip, spec.num_classes
            )
    raise TypeError(f"no data source for {spec!r}")


def level_values(kind: str, schedule: Schedule, initializer: bool) -> Array | None:
    """What a network embeds for level t: the index t itself (None for the energy networks,
    so DRL's stay as they were; arange(T) for an initializer), or CDRL's continuous time of a
    logSNR: of x_t for the EBM of level t, of its input x_{t+1} for the initializer."""
    match kind:
        case "index":
            return jnp.arange(schedule.num_levels, dtype=jnp.float32) if initializer else None
        case "logsnr":
            times = continuous_time(schedule)
            return times[1:] if initializer else times[:-1]
    raise ValueError(f"unknown level embedding {kind!r}")


def build_conditioning(spec: ExperimentSpec, data: sources.DataSource) -> Conditioning | None:
    """The condition block compiled against the data: a class needs a labelled dataset, an
    attribute one the data kind can derive (SpecError located at the condition block)."""
    cond = spec.condition
    if cond is None:
        return None
    if cond.on == "class":
        if data.num_classes is None:
            raise SpecError([
                f"{spec.line_of('condition', 'on')}: condition.on: class, but the {data.kind!r} "
                "data have no classes (image_folder and npz: set data.num_classes)"
            ])  # fmt: skip
        return Conditioning(
            "class", ("class",), (data.num_classes,), cond.p_uncond, data.kind,
            cond.embedding_init_std,
        )  # fmt: skip
    known = ATTRIBUTES_OF_KIND.get(data.kind, ())
    unknown = [a for a in cond.attributes if a not in known]
    if unknown:
        raise SpecError([
            f"{spec.line_of('condition', 'attributes')}: condition.attributes: {unknown} cannot "
            f"be derived from {data.kind!r} data (its attributes: {list(known) or 'none'})"
        ])  # fmt: skip
    cards = (2,) * len(cond.attributes)
    return Conditioning(
        "attributes", tuple(cond.attributes), cards, cond.p_uncond, data.kind,
        cond.embedding_init_std,
    )  # fmt: skip


def build_tasks(spec: ExperimentSpec, conditioning: Conditioning | None) -> TaskSettings | None:
    """The tasks block checked against the condition (SpecError located at the field): guidance
    needs class conditioning, a composition's slots must be the condition's, in range."""
    tasks = spec.tasks
    if tasks is None:
        return None

    def refuse(path: tuple, message: str):
        field = ".".join(str(p) for p in path)
        raise SpecError([f"{spec.line_of(*path)}: {field}: {message}"])

    if conditioning is None:
        refuse(("tasks",), "guided and composed generation need a `condition:` block")
    if tasks.guidance_weights and conditioning.on != "class":
        refuse(("tasks", "guidance_weights"), "classifier-free guidance needs condition.on: class")
    compositions = []
    for i, comp in enumerate(tasks.compositions):
        terms = []
        for j, term in enumerate(comp.terms):
            try:
                vector = conditioning.parse(term.condition)
            except (KeyError, ValueError) as err:
                refuse(("tasks", "compositions", i, "terms", j, "condition"), err.args[0])
            terms.append((tuple(int(v) for v in vector), term.weight))
        compositions.append((comp.name, tuple(terms)))
    names = [name for name, _ in compositions]
    if len(set(names)) != len(names):
        refuse(("tasks", "compositions"), f"composition names must differ: {names}")
    chain = tasks.chain
    return TaskSettings(
        tuple(tasks.guidance_weights),
        tuple(compositions),
        tasks.num_samples,
        tasks.num_draws,
        None if chain is None else chain.num_steps,
        1.0 if chain is None else chain.step_scale,
    )


def _with_condition_init(factory: Callable, conditioning: Conditioning | None) -> Callable:
    """The factory, its network's condition tables drawn at `embedding_init_std` (from a key
    folded from the network's own, so the other weights keep theirs); itself when the tables
    start at zero."""
    if conditioning is None or conditioning.embedding_init_std == 0.0:
        return factory
    std = conditioning.embedding_init_std

    def make(key):
        return with_random_tables(factory(key=key), std, jax.random.fold_in(key, 0xC0D))

    return make


def _with_conv_backend(factory: Callable | None, requested: str) -> Callable | None:
    """The factory, its network's convolutions set to the backend `requested` resolves to
    (resolved at the first call, once JAX's backend is up: drlx.ops.conv.resolve_backend)."""
    if factory is None:
        return None

    def make(key):
        return with_conv_backend(factory(key=key), resolve_backend(requested))

    return make


def network_factory(
    spec: model_spec.ModelSpec,
    shape: tuple[int, ...],
    schedule: Schedule,
    cardinalities: tuple[int, ...] | None = None,
) -> Callable[..., AbstractEnergyNetwork]:
    """key -> a freshly initialised energy network for examples of `shape` (conditional on a
    condition of these slot sizes, if given)."""
    levels = level_values(spec.level_embedding, schedule, initializer=False)
    match spec:
        case model_spec.MLPEnergy():
            return functools.partial(
                MLPEnergy,
                math.prod(shape),
                spec.width,
                spec.depth,
                spec.embed_dim,
                spec.activation,
                spec.fourier_features,
                spec.fourier_scale,
                level_values=levels,
                cardinalities=cardinalities,
            )
        case model_spec.ResNetEnergy():
            _, _, channels = shape
            return functools.partial(
                ResNetEnergy,
                channels,
                spec.width,
                spec.blocks_per_resolution,
                spec.channel_mults,
                spec.embed_dim,
                spec.spectral_norm,
                level_values=levels,
                cardinalities=cardinalities,
            )
    raise TypeError(f"no network for {spec!r}")


def initializer_factory(
    spec: init_spec.InitializerSpec,
    shape: tuple[int, ...],
    schedule: Schedule,
    cardinalities: tuple[int, ...] | None = None,
) -> Callable[..., AbstractInitializer]:
    """key -> a freshly initialised CDRL initializer for examples of `shape` (conditional on a
    condition of these slot sizes, if given)."""
    levels = level_values(spec.level_embedding, schedule, initializer=True)
    match spec:
        case init_spec.MLPInitializer():
            return functools.partial(
                MLPInitializer, math.prod(shape), spec.width, spec.depth, spec.embed_dim,
                spec.activation, levels, cardinalities=cardinalities,
            )  # fmt: skip
        case init_spec.UNetInitializer():
            height, _, channels = shape
            return functools.partial(
                UNetInitializer, channels, spec.width, spec.channel_mults, spec.num_res_blocks,
                spec.attention_resolutions, height, spec.dropout, spec.groups, levels,
                cardinalities=cardinalities,
            )  # fmt: skip
    raise TypeError(f"no initializer for {spec!r}")


def _decayed(params: AbstractInitializer):
    """Weight decay's mask: every array but the levels' embedding inputs (constants)."""
    mask = jax.tree.map(lambda _: True, params)
    return eqx.tree_at(lambda m: m.level_values, mask, False)


def initializer_optimizer(spec: init_spec.InitializerSpec) -> optax.GradientTransformation:
    """AdamW after a linear warm-up (none by default), its gradient clipped to a global norm;
    weight decay spares `level_values`, the constant inputs of the level embedding."""
    lr = spec.learning_rate
    if spec.warmup_steps:
        lr = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
    adamw = optax.adamw(
        lr, b1=spec.beta1, b2=spec.beta2, weight_decay=spec.weight_decay, mask=_decayed
    )
    if spec.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(spec.grad_clip), adamw)


def build_sampler(spec: sampler_spec.SamplerSpec, training: bool) -> AbstractSampler:
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
    cosine decay to zero at num_steps (`lr_schedule: cosine`); the gradient clipped to a global
    norm when `grad_clip` is set (CDRL), not clipped otherwise (DRL)."""
    warmup = max(spec.warmup_steps, 1)
    match spec.lr_schedule:
        case "constant":
            lr = optax.linear_schedule(0.0, spec.learning_rate, warmup)
        case "cosine":
            lr = optax.warmup_cosine_decay_schedule(
                0.0, spec.learning_rate, warmup, max(spec.num_steps, warmup + 1)
            )
    adam = optax.adam(lr, b1=spec.beta1, b2=spec.beta2)
    if spec.grad_clip is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(spec.grad_clip), adam)


def build_density(
    spec: density_spec.Density, seed: int, num_projections: int
) -> tuple[DensitySettings, LongRunSettings]:
    """The density stage's settings and the long-run chains' (see their classes)."""
    ais = AISSettings(
        spec.num_chains,
        spec.num_annealing_steps,
        spec.kernel_steps,
        spec.base_proposals,
        spec.target_acceptance,
    )
    density = DensitySettings(
        ais=ais,
        top_chains=spec.top_chains,
        num_heldout=spec.num_heldout,
        num_quadrature_checks=spec.num_quadrature_checks,
        quadrature_resolution=spec.quadrature_resolution,
        check_chains=spec.check_chains,
        check_annealing_steps=spec.check_annealing_steps,
        check_chains_level_0=spec.check_chains_level_0,
        check_annealing_steps_level_0=spec.check_annealing_steps_level_0,
        dequantize_seed=seed,
    )
    long_run = LongRunSettings(
        steps=spec.long_run_steps,
        chains=spec.long_run_chains,
        levels=tuple(spec.long_run_levels),
        thin=spec.long_run_thin,
        horizons=tuple(spec.long_run_horizons),
        drift_ratio=spec.long_run_drift_ratio,
        num_projections=num_projections,
    )
    return density, long_run


# The training chain's step against the narrowest target each level can have, s_t^2 / V*_t
# (docs/method.md §4.1b). Above 1, no energy's ULA chain is as narrow as such a target, so
# learning sharpens the energy until the chain diverges. Measured on two_moons (4000 steps):
# the shipped toys' largest ratio, 1.02, trains; 1.46 (cosine, 10 levels) and 1.65 (6)
# diverged. Level 0 is not checked: its narrowest target is the data's own quantization or
# noise, and the shipped digits train at a level-0 ratio of 4.7.
STEP_RATIO_WARN = 1.05
STEP_RATIO_REFUSE = 1.25


def check_step_sizes(spec: ExperimentSpec, schedule: Schedule, step_sq, spread: float):
    """Refuse (SpecError, located at sampler.step_size_b2) a ULA training chain whose step
    exceeds STEP_RATIO_REFUSE times the narrowest target of a level above 0; warn from
    STEP_RATIO_WARN. Returns every level's ratio (level 0's included)."""
    ratio = np.asarray(step_sq, np.float64) / schedule.narrowest_conditional_variance(spread)
    if spec.sampler.kind != "ula" or len(ratio) < 2:  # MALA corrects its chain
        return ratio
    t = 1 + int(np.argmax(ratio[1:]))
    b2 = spec.sampler.step_size_b2
    where = spec.line_of("sampler", "step_size_b2")
    message = (
        f"{where}: sampler.step_size_b2: level {t}'s Langevin step is {ratio[t]:.2f}x the "
        f"narrowest target it can have (s_t^2 / V*_t with the data's spread {spread:g}, "
        f"docs/method.md §4.1b); above 1 the chains cannot become as narrow as the data and "
        f"training diverges. Use step_size_b2 <= {b2 / ratio[t]:.3g} with step_size_rule "
        f"{spec.sampler.step_size_rule!r}, or step_size_rule: conditional (then "
        "step_size_b2 < 1 is safe on every schedule)"
    )
    if ratio[t] >= STEP_RATIO_REFUSE:
        raise SpecError([message + f"; refused from {STEP_RATIO_REFUSE}"])
    if ratio[t] >= STEP_RATIO_WARN:
        warnings.warn(message, UserWarning, stacklevel=3)
    return ratio


def check_spec(spec: ExperimentSpec) -> None:
    """The checks `build` makes beyond validation (now: the step sizes), without building."""
    schedule, data = build_schedule(spec.diffusion), build_data(spec.data)
    b2, rule = spec.sampler.step_size_b2, spec.sampler.step_size_rule
    check_step_sizes(spec, schedule, schedule.step_size_sq(b2, rule, data.spread), data.spread)
    build_tasks(spec, build_conditioning(spec, data))


def build(spec: ExperimentSpec) -> Experiment:
    """Compile a validated spec into the objects and settings the engines use."""
    schedule = build_schedule(spec.diffusion)
    data = build_data(spec.data)
    b2, rule = spec.sampler.step_size_b2, spec.sampler.step_size_rule
    step_sq = schedule.step_size_sq(b2, rule, data.spread)
    check_step_sizes(spec, schedule, step_sq, data.spread)
    match spec.model.output_scale:
        case "step_size":
            g_scale = step_sq
        case "tether_variance":
            g_scale = schedule.sigma[1:] ** 2
    init = spec.initializer
    conditioning = build_conditioning(spec, data)
    cards = None if conditioning is None else conditioning.cardinalities
    tasks = build_tasks(spec, conditioning)
    density, long_run = build_density(spec.density, spec.seed, spec.evaluate.num_projections)
    train = TrainSettings(
        num_steps=spec.train.num_steps,
        batch_size=spec.train.batch_size,
        log_every=spec.train.log_every,
        ema_decay=spec.train.ema_decay,
        shared_noise=spec.diffusion.shared_noise,
        data_seed=spec.seed,
        flip=data.flip,
        initializer_ema_decay=spec.initializer.ema_decay if spec.initializer else None,
        dequantize=spec.train.dequantize,
    )
    evaluate = EvaluateSettings(
        num_samples=spec.evaluate.num_samples,
        num_projections=spec.evaluate.num_projections,
        heatmap_resolution=spec.evaluate.heatmap_resolution,
        inception_weights=spec.evaluate.inception_weights,
        num_draws=spec.evaluate.num_draws,
        draw_size=spec.evaluate.draw_size,
    )
    r = spec.runtime
    runtime = RuntimeSettings(
        r.devices, r.progress, r.sample_batch_size, r.checkpoint_every, r.conv_backend
    )
    return Experiment(
        name=spec.name,
        scientific_hash=spec.scientific_hash(),
        training_hash=spec.training_hash(),
        seed=spec.seed,
        root_key=jax.random.key(spec.seed),
        data=data,
        schedule=schedule,
        step_sq=step_sq,
        g_scale=g_scale,
        weights=loss_weights(spec.objective.weighting, schedule, g_scale),
        make_network=_with_conv_backend(
            _with_condition_init(
                network_factory(spec.model, data.shape, schedule, cards), conditioning
            ),
            r.conv_backend,
        ),
        make_initializer=_with_conv_backend(
            None
            if init is None
            else _with_condition_init(
                initializer_factory(init, data.shape, schedule, cards), conditioning
            ),
            r.conv_backend,
        ),
        initializer_optimizer=None if init is None else initializer_optimizer(init),
        proposal_std=None if init is None else posterior_std(schedule),
        tweedie=spec.sampler.tweedie,
        optimizer=build_optimizer(spec.train),
        train_sampler=build_sampler(spec.sampler, training=True),
        eval_sampler=build_sampler(spec.sampler.generation or spec.sampler, training=False),
        train=train,
        evaluate=evaluate,
        density=density,
        long_run=long_run,
        runtime=runtime,
        conditioning=conditioning,
        tasks=tasks,
    )
