"""Langevin samplers (one algorithm per file) and progressive generation."""

from drlx.samplers.base import Sampler
from drlx.samplers.mala import MALA, mala_step, target_from_log_prob
from drlx.samplers.many import sample_many
from drlx.samplers.progressive import generate, recover
from drlx.samplers.ula import ULA
from drlx.samplers.underdamped import Underdamped

__all__ = [
    "MALA",
    "ULA",
    "Sampler",
    "Underdamped",
    "generate",
    "mala_step",
    "recover",
    "sample_many",
    "target_from_log_prob",
]
