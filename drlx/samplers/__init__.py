"""Langevin samplers behind `AbstractSampler` (base.py), one algorithm per file: ula.py, mala.py,
underdamped.py; progressive generation from noise (progressive.py, many.py).

Import from the modules themselves: this file imports nothing, so that code using one sampler
does not depend on the others (the pipeline's dependencies are computed from imports)."""
