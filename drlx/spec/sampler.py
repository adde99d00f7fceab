"""The `sampler:` block: the Langevin chain of each conditional EBM (docs/method.md §4)."""

from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from drlx.spec.base import Block, ChainSteps


class _Chain(Block):
    """What every sampler shares: K steps per level of size s_t^2 = b^2 c_t^2 sigma_{t+1}^2."""

    num_steps: ChainSteps = 30
    step_size_b2: float = Field(2e-4, gt=0, description="b^2 in s_t^2 = b^2 c_t^2 sigma_{t+1}^2")
    # drl: c_t^2 = sigmabar_t / sigmabar_0 (the paper's code); tether: c_t^2 = 1, so every level
    # takes the same fraction b^2 of its tether's variance per step; conditional: s_t^2 = b^2 V*_t,
    # the fraction b^2 (< 1) of the narrowest target the level can have, safe on every schedule.
    # Every rule is checked when the spec is built (docs/method.md §4.1b).
    step_size_rule: Literal["drl", "tether", "conditional"] = "drl"
    # generation ends with Tweedie's denoising step x = (x_0 + sigmabar_0^2 score) / abar_0, the
    # score from the level-0 EBM's own log-density (docs/method.md §11)
    tweedie: bool = False
    # generation's own chain (sample, evaluate, steps sweep, long runs) when it should differ
    # from training's, e.g. `{kind: underdamped, friction: 0.3}` after ULA training. It shares
    # this block's step sizes and Tweedie step; num_steps defaults to this block's. None: the
    # training chain with its evaluation noise scale.
    generation: Optional["SamplerSpec"] = None

    @model_validator(mode="before")
    @classmethod
    def _generation_inherits(cls, data):
        """Fill the generation chain's shared fields from this block before validation."""
        gen = data.get("generation") if isinstance(data, dict) else None
        if not isinstance(gen, dict):
            return data
        shared = ("step_size_b2", "step_size_rule", "tweedie")
        own = [k for k in (*shared, "generation") if k in gen]
        if own:
            raise ValueError(
                f"sampler.generation: {own} cannot be set here; generation shares "
                "the sampler block's step sizes and Tweedie step (set them there)"
            )
        inherited = shared if "num_steps" in gen else (*shared, "num_steps")
        fill = {k: data[k] if k in data else cls.model_fields[k].default for k in inherited}
        return {**data, "generation": {**gen, **fill}}


class ULA(_Chain):
    """Unadjusted Langevin (the paper's): s_t^2 = b^2 c_t^2 sigma_{t+1}^2, K steps per level."""

    kind: Literal["ula"]
    noise_scale_train: float = Field(1.0, ge=0)
    noise_scale_eval: float = Field(0.99, ge=0)


class MALA(_Chain):
    """Metropolis-adjusted Langevin: ULA's proposal plus an accept/reject test, so each chain
    leaves its conditional exactly invariant. No noise scale: the test corrects towards the
    untempered target, so MALA is exact only with noise scale 1, which it always uses."""

    kind: Literal["mala"]


class Underdamped(_Chain):
    """Underdamped (kinetic) Langevin through diffrax: one unit of SDE time per step, velocity
    scale u = s_t^2 (so a fully refreshed leapfrog step is ULA's step), friction per step."""

    kind: Literal["underdamped"]
    # A step keeps exp(-friction) of the velocity. 2 moves like ULA in the overdamped limit;
    # lower (down to critical damping, 2 s / sqrt(V) for a Gaussian of variance V) mixes faster.
    friction: float = Field(1.0, gt=0)
    # align: one gradient per step (as ULA); quicsort, should: third order, two per step
    solver: Literal["align", "quicsort", "should"] = "align"
    # stationary: v0 ~ N(0, u I), the velocity's stationary law; zero: v0 = 0.
    initial_velocity: Literal["stationary", "zero"] = "stationary"
    # n tempers the target to p^(1/n^2) (u -> n^2 u, f -> f / n^2); must be > 0.
    noise_scale_train: float = Field(1.0, gt=0)
    noise_scale_eval: float = Field(1.0, gt=0)


SamplerSpec = Annotated[ULA | MALA | Underdamped, Field(discriminator="kind")]
for _chain in (ULA, MALA, Underdamped):
    _chain.model_rebuild()
