"""Equinox energy networks g_theta(y, t): batched inputs, one scalar per example."""

from drlx.models.mlp import MLPEnergy
from drlx.models.resnet import ResNetEnergy

__all__ = ["MLPEnergy", "ResNetEnergy"]
