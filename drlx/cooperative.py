"""CDRL's cooperative parts (docs/method.md §11): the initializer's proposal for the start of
each level's chain, the initializer's loss, and Tweedie's denoising step after level 0.

The proposal of level t, in the EBM's variable y = a_out[t+1] x_t, is
    y_0 = mean(x~, t) + v_t eps,    mean(x~, t) = x~ + net(x~, t),
with v_t the standard deviation of the diffusion's posterior q(x_t | x_{t+1}, x_0) in y:
    v_t = a_out[t+1] sigmabar_t sigma_{t+1} / sigmabar_{t+1}.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from drlx.batch import broadcast_to_example, sum_squares
from drlx.diffusion import Schedule
from drlx.guidance import Guide
from drlx.keys import per_example_normal
from drlx.models.base import AbstractInitializer

# per-example tag of the proposal's noise; a chain's step k uses tags k = 0 .. K-1
PROPOSAL_NOISE_TAG = 1 << 20


def posterior_std(schedule: Schedule) -> Float[Array, " T"]:
    """v_t of every level: the posterior's standard deviation, in the EBM's variable y."""
    s = schedule
    return s.a_out[1:] * s.sigmabar[:-1] * s.sigma[1:] / s.sigmabar[1:]


class Proposal(eqx.Module):
    """The initializer with its fixed per-level spread: where each level's chain starts."""

    initializer: AbstractInitializer
    std: Float[Array, " T"]

    def __call__(
        self,
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        keys: PRNGKeyArray,
        dropout_key: PRNGKeyArray | None = None,
        guide: Guide | None = None,
    ) -> Float[Array, " N *D"]:
        """y_0 = mean(x~, t) + v_t eps; example i draws eps from fold_in(keys[i], the tag).
        Under a guide the mean is sum_j w_j mean(x~, t, c_j) (docs/method.md §12)."""
        eps = per_example_normal(keys, PROPOSAL_NOISE_TAG, x_tilde)
        return (
            self.mean(x_tilde, t, dropout_key, guide)
            + broadcast_to_example(self.std[t], x_tilde) * eps
        )

    def mean(
        self,
        x_tilde: Float[Array, " N *D"],
        t: Int[Array, " N"],
        dropout_key: PRNGKeyArray | None = None,
        guide: Guide | None = None,
    ) -> Float[Array, " N *D"]:
        """The proposal's mean, guided if a guide is given."""
        if guide is None:
            return self.initializer.mean(x_tilde, t, key=dropout_key)

        def one(c):
            return self.initializer.mean(x_tilde, t, key=dropout_key, c=c)

        means = jax.vmap(one, in_axes=1)(guide.conditions)  # (J, N, *D)
        return jnp.tensordot(guide.weights, means, axes=1)


def initializer_loss(
    initializer: AbstractInitializer,
    std: Float[Array, " T"],
    x_tilde: Float[Array, " N *D"],
    t: Int[Array, " N"],
    keys: PRNGKeyArray,
    y_refined: Float[Array, " N *D"],
    dropout_key: PRNGKeyArray | None = None,
    guide: Guide | None = None,
) -> Float[Array, ""]:
    """CDRL's initializer loss: the batch mean of ||sg(y_K) - y_0||^2, y_0 the proposal drawn
    with the same noise as the chain's start (reparameterized, so the gradient reaches the mean).

    Arguments:
        initializer: the network being trained.
        std: v_t of every level.
        x_tilde, t, keys: the tethers, levels and per-example keys the chains were started with.
        y_refined: y_K, the chains' states after the EBM's Langevin steps.
        dropout_key: the initializer's dropout randomness (None: no dropout).
        guide: the chains' conditions (a conditional initializer; None: unconditional).
    """
    proposal = Proposal(initializer, std)
    y0 = proposal(x_tilde, t, keys, dropout_key, guide)
    return jnp.mean(sum_squares(jax.lax.stop_gradient(y_refined) - y0))
