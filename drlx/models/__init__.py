"""Equinox energy networks g_theta(y, t): batched inputs, one scalar per example."""

from drlx.models.mlp import MLPEnergy

__all__ = ["MLPEnergy"]
