"""Shared configuration for every spec block: strict, frozen, no unknown keys."""

from pydantic import BaseModel, ConfigDict


class Block(BaseModel):
    """Base of every spec block: unknown keys are errors and a loaded spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
