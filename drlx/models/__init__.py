"""Equinox networks: energy networks g_theta(y, t) behind `AbstractEnergyNetwork` (base.py),
mlp.py for vectors, resnet.py for images, layers.py; and the interface of CDRL's initializers.

Import from the modules themselves: this file imports nothing, so that code using one network
does not depend on the others (the pipeline's dependencies are computed from imports)."""
