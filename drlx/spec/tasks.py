"""The `tasks:` block: what a conditional model is asked after training (docs/method.md §12):
classifier-free guidance over a grid of strengths, and compositions of conditions. Read only
after training (not in the training hash)."""

from pydantic import Field

from drlx.spec.base import Block, ChainSteps, Examples


class Term(Block):
    """One expert of a product: a condition (slot name -> value; slots not named are null) and
    its weight (negative: negation)."""

    condition: dict[str, int] = Field(min_length=1, max_length=16)
    weight: float = Field(ge=-100, le=100)


class Composition(Block):
    """A product of experts over conditions: log p = sum_i w_i f(y | c_i) - (sum_i w_i - 1)
    f(y | null). Its target set (where samples should land): every condition of a positive
    weight holds and none of a negative one."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=64)
    terms: tuple[Term, ...] = Field(strict=False, min_length=1, max_length=16)


class GuidedChain(Block):
    """The chain of guided and composed generation when it should differ from generation's:
    num_steps steps per level of step_scale times the level's step size s_t^2. A guided target
    sum_j w_j f(y | c_j) is stiffer than one network's f (its Hessian adds each condition's
    curvature difference from the unconditional network, times its weight), and ULA's bias
    grows with step size times stiffness (docs/method.md §12.3): compositions with large
    weights need a smaller step."""

    num_steps: ChainSteps
    step_scale: float = Field(gt=0, le=1)


class Tasks(Block):
    """Guided and composed generation of a conditional model (needs a `condition:` block)."""

    # classifier-free guidance strengths w, the density (1 + w) f(y | c) - w f(y | null);
    # CDRL's grid: 0 to 1 by 0.1, then 2 and 3
    guidance_weights: tuple[float, ...] = Field(
        (), strict=False, max_length=64, description="CFG strengths w (condition on: class)"
    )
    compositions: tuple[Composition, ...] = Field((), strict=False, max_length=32)
    # samples per guidance strength (split evenly over the classes) and per composition
    num_samples: Examples = 1000
    # independent draws behind the sample-quality numbers at each guidance strength
    num_draws: int = Field(5, ge=2, le=10_000)
    # guided and composed chains (same sampler kind as generation); None: generation's chain
    chain: GuidedChain | None = None
