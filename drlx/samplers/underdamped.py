"""Underdamped (kinetic) Langevin dynamics through diffrax's ULD solvers (ALIGN, QUICSORT, ShOULD).

diffrax integrates
    dx = v dt,   dv = -gamma v dt - u grad f(x) dt + sqrt(2 gamma u) dW,
whose stationary law is proportional to exp(-f(x) - ||v||^2 / (2 u)). Here f = -log p / n^2 and
the velocity scale is u = n^2 s^2, with s^2 the chain's step size (ULA's) and n the noise scale:
    dv = -gamma v dt + s^2 grad log p(x) dt + n s sqrt(2 gamma) dW,
so for n = 1 the positions are stationary at the target, and n < 1 samples p^(1/n^2) (the same
tempering as ULA's noise scale). One chain step is one unit of SDE time. The mapping matches ULA:
a leapfrog step of unit time from a fresh velocity v ~ N(0, s^2 I) is the ULA step
x + (s^2/2) grad log p + s eps. With it the friction gamma is per step (a step keeps exp(-gamma) of
the velocity); in the overdamped limit one step moves like 2/gamma ULA steps, and for a Gaussian
of variance V critical damping is gamma = 2 s / sqrt(V).

The velocity starts at N(0, u I), its stationary law (`random_velocity=True`), so the first step
is as noisy as a ULA step and the chain is out of equilibrium in position only; or at 0.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from drlx.batch import broadcast_to_example
from drlx.keys import fold_each, per_example_normal
from drlx.samplers.base import AbstractSampler, Target

ULD_SOLVERS = (diffrax.ALIGN, diffrax.QUICSORT, diffrax.ShOULD)


class PerExampleBrownian(diffrax.AbstractBrownianPath):
    """Brownian increments over unit steps [k, k+1], example i's from fold_in(keys[i], k) alone.

    A fresh draw per step (like diffrax.UnsafeBrownianPath) is exact for fixed unit steps; the
    step index k = round(t0) picks the key, so example i's path does not depend on the batch.
    """

    keys: PRNGKeyArray
    shape: tuple[int, ...] = eqx.field(static=True)
    levy_area: type[diffrax.SpaceTimeLevyArea | diffrax.SpaceTimeTimeLevyArea] = eqx.field(
        static=True
    )
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        """The increment W(t1) - W(t0) (with its space-time(-time) Levy areas if use_levy)."""
        del left
        if t1 is None:
            raise ValueError("PerExampleBrownian gives increments over steps only (pass t1)")
        dt = jnp.asarray(t1 - t0, jnp.float32)
        step_keys = fold_each(self.keys, jnp.round(t0).astype(jnp.int32))
        like = jax.ShapeDtypeStruct(self.shape, jnp.float32)
        draw = lambda j: per_example_normal(step_keys, j, like)  # noqa: E731
        w = jnp.sqrt(dt) * draw(0)
        if not use_levy:
            return w
        hh = jnp.sqrt(dt / 12.0) * draw(1)
        if self.levy_area is diffrax.SpaceTimeLevyArea:
            return diffrax.SpaceTimeLevyArea(dt=dt, W=w, H=hh)
        kk = jnp.sqrt(dt / 720.0) * draw(2)
        return diffrax.SpaceTimeTimeLevyArea(dt=dt, W=w, H=hh, K=kk)


class Underdamped(AbstractSampler):
    """num_steps unit-time steps of underdamped Langevin with velocity scale u = n^2 s^2."""

    num_steps: int = eqx.field(static=True)
    friction: float
    noise_scale: float
    random_velocity: bool = eqx.field(static=True)
    solver: diffrax.ALIGN | diffrax.QUICSORT | diffrax.ShOULD

    def __check_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"Underdamped: num_steps must be >= 0, got {self.num_steps}")
        if not self.friction > 0:
            raise ValueError(f"Underdamped: friction must be > 0, got {self.friction}")
        if not self.noise_scale > 0:
            raise ValueError(f"Underdamped: noise_scale must be > 0, got {self.noise_scale}")
        if not isinstance(self.solver, ULD_SOLVERS):
            raise TypeError(f"Underdamped: solver must be ALIGN, QUICSORT or ShOULD: {self.solver}")

    def __call__(
        self,
        target: Target,
        y0: Float[Array, " N *D"],
        step_sq: Float[Array, " N"],
        keys: PRNGKeyArray,
    ) -> Float[Array, " N *D"]:
        """Run the dynamics from (y0, v0) for num_steps units of time; return the positions.

        Arguments:
            target: returns (log p, grad log p) of each example at y.
            y0: starting positions.
            step_sq: s^2 for each example.
            keys: one key per example (velocity from fold_in(key, num_steps), the Brownian
                increment of step k from fold_in(key, k)).

        Returns:
            The positions after num_steps steps (y0 itself for none: CDRL's initializer alone).
        """
        if self.num_steps == 0:
            return y0
        temperature = self.noise_scale**2
        u = jnp.broadcast_to(broadcast_to_example(step_sq * temperature, y0), y0.shape)
        gamma = jnp.full(y0.shape, self.friction, y0.dtype)
        grad_f = lambda x, args: -target(x)[1] / temperature  # noqa: E731
        # ALIGN needs space-time Levy area; the third-order solvers space-time-time too
        if isinstance(self.solver, diffrax.ALIGN):
            levy = diffrax.SpaceTimeLevyArea
        else:
            levy = diffrax.SpaceTimeTimeLevyArea
        path = PerExampleBrownian(keys, y0.shape, levy, 0.0, float(self.num_steps))
        terms = diffrax.MultiTerm(
            diffrax.UnderdampedLangevinDriftTerm(gamma, u, grad_f),
            diffrax.UnderdampedLangevinDiffusionTerm(gamma, u, path),
        )
        if self.random_velocity:
            v0 = jnp.sqrt(u) * per_example_normal(keys, self.num_steps, y0)
        else:
            v0 = jnp.zeros_like(y0)
        solution = diffrax.diffeqsolve(
            terms,
            self.solver,
            t0=0.0,
            t1=float(self.num_steps),
            dt0=1.0,
            y0=(y0, v0),
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=self.num_steps,
            adjoint=diffrax.ForwardMode(),
        )
        return solution.ys[0][0]
