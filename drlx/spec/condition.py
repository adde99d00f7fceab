"""The `condition:` block: one network that is both conditional and unconditional (docs/method.md
§12). The energy network (and CDRL's initializer) also take a condition: the example's class, or
a vector of binary attributes; in training each entry of the condition is replaced by its null
token with probability `p_uncond`, so that f(y | null) is the unconditional model. Absent: the
models are unconditional."""

from typing import Literal

from pydantic import Field, model_validator

from drlx.spec.base import Block

# Attributes derived from what the data carry (drlx/data/conditions.py): for the digits, from
# the class; for the 2D toys, from the point's position in the plane.
AttributeName = Literal["even", "at_least_5", "has_loop", "right_half", "upper_half"]


class Condition(Block):
    """What the models are conditioned on, and how often the condition is dropped in training."""

    on: Literal["class", "attributes"]
    # the attributes, in the order of the condition vector (on: attributes only)
    attributes: tuple[AttributeName, ...] = Field((), strict=False, max_length=16)
    # CDRL: 0.1. With several attributes each is dropped independently, so a condition on one
    # attribute alone (the others null), as compositions use, is seen in training with
    # probability (1 - p) p^(M-1): 0.5 is a better choice than 0.1 for M = 2 or 3 attributes.
    p_uncond: float = Field(0.1, ge=0, lt=1)
    # standard deviation of the condition tables' initial entries; 0: zero tables, the network
    # starts as its unconditional one (unit-scale tables, 20x the level embedding's scale, made
    # a three-attribute digits MLP diverge at step 200)
    embedding_init_std: float = Field(0.0, ge=0, le=10)

    @model_validator(mode="after")
    def _attributes_match(self):
        if self.on == "attributes" and not self.attributes:
            raise ValueError("on: attributes needs a non-empty list `attributes`")
        if self.on == "class" and self.attributes:
            raise ValueError("`attributes` is only read with on: attributes")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes listed twice in {list(self.attributes)}")
        return self
