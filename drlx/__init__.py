"""drlx: energy-based models by diffusion recovery likelihood, in JAX."""

from drlx._xla import add_default_flags

add_default_flags()
