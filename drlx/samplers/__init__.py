"""Langevin samplers (one algorithm per file) and progressive generation."""

from drlx.samplers.many import sample_many
from drlx.samplers.progressive import generate, recover
from drlx.samplers.ula import ULA

__all__ = ["ULA", "generate", "recover", "sample_many"]
