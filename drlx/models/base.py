"""The interfaces of the learned models, in Equinox's abstract/final style: every concrete
network subclasses one of these and is itself final (never subclassed)."""

import abc
from typing import Self

import equinox as eqx
from jaxtyping import Array, Float, Int, PRNGKeyArray


class AbstractEnergyNetwork(eqx.Module):
    """g_theta(y, t): one scalar log-density (up to scale) per example of a batch.

    The level's part is split from the input's, so that a Langevin chain computes what depends
    on t once, not at every step: g(y, t) = energy(y, embed(t)).
    """

    @abc.abstractmethod
    def embed(self, t: Int[Array, " N"], c: Int[Array, " N M"] | None = None) -> tuple[Array, ...]:
        """Everything that depends on the level (and the condition c) only: a context per
        example. A conditional network reads c = None as the null condition (unconditional)."""

    @abc.abstractmethod
    def energy(self, y: Float[Array, " N *D"], context: tuple[Array, ...]) -> Float[Array, " N"]:
        """g(y, t) given `embed(t)`."""

    def __call__(
        self, y: Float[Array, " N *D"], t: Int[Array, " N"], c: Int[Array, " N M"] | None = None
    ) -> Float[Array, " N"]:
        """Network output g for a batch of inputs, levels (and conditions)."""
        return self.energy(y, self.embed(t) if c is None else self.embed(t, c))

    @abc.abstractmethod
    def power_iteration(self) -> Self:
        """A copy with every spectral-norm estimate advanced by one power iteration (called
        once per training step); a network without spectral normalization returns self."""

    @abc.abstractmethod
    def precompute(self) -> Self:
        """The same function with its weights' preprocessing done once, for a chain whose
        weights are fixed; a network with nothing to precompute returns self."""


class AbstractInitializer(eqx.Module):
    """A proposal for the start of each level's chain (CDRL's initializer): a Gaussian
    N(mean(x~, t), var_t I) in the chain's coordinates y."""

    @abc.abstractmethod
    def mean(
        self,
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        key: PRNGKeyArray | None = None,
        c: Int[Array, " N M"] | None = None,
    ) -> Float[Array, " N *D"]:
        """The proposal's mean for tethers x~ = x_{t+1} at levels t (and conditions c; None:
        the null condition of a conditional initializer); `key` turns dropout on (training),
        None leaves the mean deterministic (sampling)."""
