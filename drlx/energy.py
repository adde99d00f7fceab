"""The conditional log-density of each level (docs/method.md §3).

Sign convention, stated once for the whole package: the network output g and
f = g / s_t^2 are log-densities (higher = more likely); the energy is E = -f.

For level t < T-1, with y = a_{t+1} x_t and the tether x~ = x_{t+1},
    log p(y | x~) = g(y, t) / k_t - ||y - x~||^2 / (2 sigma_{t+1}^2) - log Z(x~);
at the top level t = T-1 the tether is dropped and y = x_{T-1}. The output scale k_t is DRL's
k_t = s_t^2 (the network's drift (s^2/2) grad f = grad g / 2 is step-size free) or, as a
better-conditioned option for low-dimensional data, k_t = sigma_{t+1}^2 (g then has the scale of
a log-density times the tether's variance at every level).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.batch import sum_squares
from drlx.cooperative import Proposal
from drlx.diffusion import Schedule
from drlx.guidance import Guide
from drlx.models.base import AbstractEnergyNetwork
from drlx.samplers.base import target_from_log_prob


class ConditionalEBM(eqx.Module):
    """The network plus the schedule: log p(y | x~, t) up to log Z(x~), for a batch; and where
    each level's chain starts (`start`)."""

    network: AbstractEnergyNetwork
    schedule: Schedule
    step_sq: Float[Array, " T"]
    g_scale: Float[Array, " T"]
    proposal: Proposal | None = None

    def start(
        self,
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        keys: PRNGKeyArray,
        dropout_key: PRNGKeyArray | None = None,
        guide: Guide | None = None,
    ) -> Float[Array, " N *D"]:
        """Where each level's chain starts: the tether x~ (DRL), or a draw of the
        initializer's proposal (CDRL; docs/method.md §11) from the chain's own keys, its mean
        guided like the chain's target (§12)."""
        if self.proposal is None:
            return x_tilde
        return self.proposal(x_tilde, t, keys, dropout_key, guide)

    def embed(
        self, t: Int[Array, " N"], guide: Guide | None = None, network=None
    ) -> tuple[Array, ...]:
        """The level's (and conditions') part of the network: `network.embed(t)` without a
        guide, else one context per guide term, stacked on a new axis 0."""
        network = self.network if network is None else network
        if guide is None:
            return network.embed(t)
        return jax.vmap(network.embed, in_axes=(None, 1))(t, guide.conditions)

    def log_prob(
        self,
        y: Float[Array, " N *D"],
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        guide: Guide | None = None,
    ) -> Float[Array, " N"]:
        """Unnormalized log p(y | x~) at per-example levels t (guided: §12)."""
        return self.log_prob_in_context(y, x_tilde, t, self.embed(t, guide), guide=guide)

    def log_prob_in_context(
        self,
        y: Float[Array, " N *D"],
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        context: tuple[Array, ...],
        network: AbstractEnergyNetwork | None = None,
        guide: Guide | None = None,
    ) -> Float[Array, " N"]:
        """`log_prob` with the level's part of the network given (`embed(t, guide)`), so that
        many evaluations at the same levels compute it once; `network` defaults to the EBM's
        own (a chain passes its `precompute()`d copy)."""
        sigma = self.schedule.sigma[t + 1]
        tether = self.schedule.tethered[t + 1] * sum_squares(y - x_tilde) / (2.0 * sigma**2)
        network = self.network if network is None else network
        return self._g(network, y, context, guide) / self.g_scale[t] - tether

    @staticmethod
    def _g(network, y, context, guide: Guide | None) -> Float[Array, " N"]:
        """g(y, t), or sum_j w_j g(y, t, c_j) under a guide (contexts stacked on axis 0)."""
        if guide is None:
            return network.energy(y, context)
        terms = jax.vmap(network.energy, in_axes=(None, 0))(y, context)  # (J, N)
        return jnp.tensordot(guide.weights, terms, axes=1)

    def target(
        self, x_tilde: Float[Array, " N *D"], t: Int[Array, " N"], guide: Guide | None = None
    ) -> Callable[[Array], tuple[Array, Array]]:
        """The sampler's target for fixed (x~, t): y -> (log p(y | x~), grad_y log p(y | x~)).

        Level-dependent parts of the network, and its weights as the chain uses them
        (`precompute`), are computed once here.
        """
        network = self.network.precompute()
        context = self.embed(t, guide, network)
        return target_from_log_prob(
            lambda y: self.log_prob_in_context(y, x_tilde, t, context, network, guide)
        )

    def marginal_log_prob(
        self, y: Float[Array, " N *D"], t: Int[Array, " N"], guide: Guide | None = None
    ) -> Float[Array, " N"]:
        """f(y, t) = g(y, t) / k_t alone: the model of log p_t(y / a_{t+1}) up to a constant.

        p(x_t | x_{t+1}) is proportional to p(x_t) N(x_{t+1}; a x_t, sigma^2), and the tether is
        exactly the Gaussian factor, so g / s^2 models the marginal log-density of level t.
        """
        if guide is None:
            return self.network(y, t) / self.g_scale[t]
        return self._g(self.network, y, self.embed(t, guide), guide) / self.g_scale[t]
