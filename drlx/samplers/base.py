"""The sampler type every engine accepts (progressive generation, training, long runs)."""

from drlx.samplers.mala import MALA
from drlx.samplers.ula import ULA
from drlx.samplers.underdamped import Underdamped

Sampler = ULA | MALA | Underdamped
"""Every sampler: sampler(target, y0, step_sq, keys) -> y, example i's result from keys[i] only."""
