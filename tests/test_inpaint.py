"""Inpainting (drlx/evaluate/inpaint.py, docs/method.md §7.8): the masked chain against closed
forms on a correlated Gaussian EBM, the known pixels, the masks, the baselines and the metrics.

With g(y, t) / k_t = -(y - m)' A (y - m) / 2 the level's target is Gaussian with precision
P = A + tau I / sigma^2 and mean P^-1 (A m + tau x~ / sigma^2) (tau = 0 at the top level). Its
conditional of the hidden coordinates u given the known k is Gaussian with the Schur complement
S_uu - S_uk S_kk^-1 S_ku of its covariance S = P^-1 and mean mu_u + S_uk S_kk^-1 (y_k - mu_k);
the masked chain must sample it. Monte Carlo tolerances are Z = 5 standard errors; keys are
fixed, so each check is deterministic.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AbstractFixedNetwork, random_mlp
from jaxtyping import Array

from drlx.diffusion import Schedule, drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.evaluate.inpaint import (
    MASKS,
    clip_to_range,
    compare,
    forward_path,
    hidden_mse,
    inpaint,
    inpaint_many,
    make_mask,
    mask_metrics,
    masked_target,
    mean_image_fill,
    nearest_neighbour_fill,
)
from drlx.keys import example_keys, per_example_normal
from drlx.samplers.mala import MALA
from drlx.samplers.progressive import generate
from drlx.samplers.ula import ULA
from drlx.samplers.underdamped import Underdamped

Z = 5.0
D = 4
KNOWN = np.array([1.0, 0.0, 1.0, 0.0])  # coordinates 0 and 2 known, 1 and 3 hidden
MEAN = np.array([0.3, -0.2, 0.1, 0.4])


class QuadraticFormEnergy(AbstractFixedNetwork):
    """g(y, t) = -k_t (y - m_t)' A_t (y - m_t) / 2: level t's log-density g / k_t is
    N(m_t, A_t^-1), correlated when A_t is not diagonal."""

    mean: Array  # (T, D)
    precision: Array  # (T, D, D)
    scale: Array  # (T,)

    def embed(self, t: Array) -> tuple[Array, ...]:
        return (self.scale[t], self.mean[t], self.precision[t])

    def energy(self, y: Array, context: tuple[Array, ...]) -> Array:
        k, m, a = context
        d = y - m
        return -k * jnp.einsum("ni,nij,nj->n", d, a, d) / 2.0


def covariance() -> np.ndarray:
    """Strong correlations between known and hidden coordinates (so that the conditional mean
    moves with the known values)."""
    c = np.array(
        [
            [1.0, 0.7, 0.3, 0.2],
            [0.7, 1.0, 0.5, 0.1],
            [0.3, 0.5, 1.0, 0.6],
            [0.2, 0.1, 0.6, 1.0],
        ]
    )
    return 0.5 * c


def precision_matrix() -> np.ndarray:
    return np.linalg.inv(covariance())


def gaussian_ebm(schedule: Schedule, step_sq, means=None, precisions=None) -> ConditionalEBM:
    """Every level's g / k_t the log-density of N(MEAN, covariance()), or of N(means[t],
    inv(precisions[t]))."""
    T = schedule.num_levels
    means = np.broadcast_to(MEAN, (T, D)) if means is None else means
    precisions = (
        np.broadcast_to(precision_matrix(), (T, D, D)) if precisions is None else precisions
    )
    g_scale = jnp.asarray(np.linspace(0.5, 2.0, T), jnp.float32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    net = QuadraticFormEnergy(f32(means), f32(precisions), g_scale)
    return ConditionalEBM(net, schedule, f32(step_sq), g_scale)


def conditional(cov: np.ndarray, mu: np.ndarray, y_known: np.ndarray):
    """Mean (N, u) and covariance (u, u) of the hidden given the known coordinates of
    N(mu_i, cov), by the Schur complement of the covariance."""
    u, k = KNOWN == 0, KNOWN == 1
    gain = cov[np.ix_(u, k)] @ np.linalg.inv(cov[np.ix_(k, k)])
    mean = mu[:, u] + (y_known[:, k] - mu[:, k]) @ gain.T
    return mean, cov[np.ix_(u, u)] - gain @ cov[np.ix_(k, u)]


def check_gaussian(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray, what: str):
    """Whitened residuals have mean 0 and identity covariance, to Z standard errors."""
    z = (samples - mean) @ np.linalg.inv(np.linalg.cholesky(cov)).T
    n = len(z)
    assert np.all(np.abs(z.mean(0)) < Z / math.sqrt(n)), f"{what}: mean {z.mean(0)}"
    second = z.T @ z / n
    se = np.sqrt((1.0 + np.eye(len(cov))) / n)  # var of z_i z_j: 2 on the diagonal, 1 off it
    assert np.all(np.abs(second - np.eye(len(cov))) < Z * se), f"{what}: second moments {second}"


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


@eqx.filter_jit
def masked_chain(ebm, sampler, x_tilde, t, y_start, mask, y_known, keys):
    target = masked_target(ebm.target(x_tilde, t), mask, y_known)
    return sampler(target, y_start, ebm.step_sq[t], keys)


@pytest.mark.parametrize(
    "sampler, ratio",
    [
        (MALA(150), 0.4),  # exact at any step
        (Underdamped(200, 0.3, 1.0, True, diffrax.ALIGN()), 0.1),  # the digits' generation chain
    ],
    ids=["mala", "underdamped"],
)
def test_masked_chain_samples_the_schur_conditional(schedule, sampler, ratio):
    """At a tethered level, with its own tether and known values per chain, the hidden
    coordinates are N(conditional mean, Schur complement); the known ones of the chain's state
    are ignored (started far away, they change nothing)."""
    level, n = 2, 4096
    sigma2 = float(schedule.sigma[level + 1]) ** 2
    prec = precision_matrix() + np.eye(D) / sigma2
    cov = np.linalg.inv(prec)
    step_sq = np.full(schedule.num_levels, 1e-3)
    step_sq[level] = ratio * np.linalg.eigvalsh(cov).min()
    ebm = gaussian_ebm(schedule, step_sq)
    key = jax.random.key(3)
    x_tilde = 0.4 * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (n, D)), np.float64)
    y_known = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (n, D)), np.float64)
    y_start = np.where(KNOWN == 1, 50.0, x_tilde)  # known coordinates far off: must not matter
    mask = np.broadcast_to(KNOWN, (n, D))
    t = jnp.full((n,), level, jnp.int32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    out = masked_chain(
        ebm, sampler, f32(x_tilde), t, f32(y_start), f32(mask), f32(y_known),
        example_keys(key, n),
    )  # fmt: skip
    mu = np.linalg.solve(prec, (precision_matrix() @ MEAN)[:, None] + x_tilde.T / sigma2).T
    mean, schur = conditional(cov, mu, y_known)
    check_gaussian(np.asarray(out, np.float64)[:, KNOWN == 0], mean, schur, type(sampler).__name__)


def test_masked_chain_check_can_fail(schedule):
    """The same check on the unmasked chain (the hidden coordinates' joint law with the known
    ones free) or with the mask inverted fails."""
    level, n = 2, 2048
    sigma2 = float(schedule.sigma[level + 1]) ** 2
    prec = precision_matrix() + np.eye(D) / sigma2
    cov = np.linalg.inv(prec)
    step_sq = np.full(schedule.num_levels, 0.4 * np.linalg.eigvalsh(cov).min())
    ebm = gaussian_ebm(schedule, step_sq)
    key = jax.random.key(4)
    x_tilde = np.zeros((n, D))
    y_known = np.tile([1.5, 0.0, -1.5, 0.0], (n, 1))
    t = jnp.full((n,), level, jnp.int32)
    mu = np.linalg.solve(prec, (precision_matrix() @ MEAN)[:, None] + x_tilde.T / sigma2).T
    mean, schur = conditional(cov, mu, y_known)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    for mask in (np.zeros(D), 1.0 - KNOWN):
        out = masked_chain(
            ebm, MALA(150), f32(x_tilde), t, f32(x_tilde), f32(np.broadcast_to(mask, (n, D))),
            f32(y_known), example_keys(key, n),
        )  # fmt: skip
        with pytest.raises(AssertionError):
            check_gaussian(np.asarray(out, np.float64)[:, KNOWN == 0], mean, schur, "wrong")


def test_masked_target_gradient_is_zero_on_known_coordinates(key):
    """Value and gradient are those of the full target at y_full = m y_known + (1 - m) y,
    the gradient zeroed on known coordinates; the known coordinates of y change nothing."""
    net = random_mlp(key, dim=D)
    schedule = drl_linear_schedule(6, 1e-4, 0.02, 1000)
    ebm = ConditionalEBM(net, schedule, jnp.full(6, 1e-3), jnp.full(6, 1e-3))
    k1, k2, k3 = jax.random.split(key, 3)
    n = 16
    y, x_tilde = jax.random.normal(k1, (n, D)), jax.random.normal(k2, (n, D))
    y_known = jax.random.normal(k3, (n, D))
    mask = jnp.asarray(make_mask("random_half", n, (2, 2, 1), key).reshape(n, D))
    t = jnp.arange(n, dtype=jnp.int32) % 6
    full = ebm.target(x_tilde, t)
    values, grad = masked_target(full, mask, y_known)(y)
    y_full = mask * y_known + (1 - mask) * y
    expected_values, expected_grad = full(y_full)
    np.testing.assert_array_equal(np.asarray(grad)[np.asarray(mask) == 1], 0.0)
    np.testing.assert_allclose(values, expected_values, rtol=1e-6)
    np.testing.assert_allclose(grad, (1 - mask) * expected_grad, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(expected_grad * mask).max()) > 1e-3  # there was something to zero
    moved = masked_target(full, mask, y_known)(y + 3.0 * mask)
    np.testing.assert_array_equal(moved[0], values)
    np.testing.assert_array_equal(moved[1], grad)


def small_schedule(*a: float) -> Schedule:
    """T = len(a) - 1 levels with contractions a_0 .. a_T (docs/method.md §2.2)."""
    a = np.asarray(a, np.float64)
    abar = np.cumprod(a)
    a_out, tethered = a.copy(), np.ones_like(a)
    a_out[-1], tethered[-1] = 1.0, 0.0
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return Schedule(
        a=f32(a), sigma=f32(np.sqrt(1 - a**2)), abar=f32(abar),
        sigmabar=f32(np.sqrt(1 - abar**2)), a_out=f32(a_out), tethered=f32(tethered),
    )  # fmt: skip


def test_inpaint_one_level_matches_closed_form():
    """With one (top) level, inpaint samples the hidden coordinates of N(m, A^-1) given the
    known coordinates of x_0 = abar_0 x + sigmabar_0 eps: mean m_u + G (abar_0 x_k - m_k) and
    covariance Schur + sigmabar_0^2 G G' (G the regression of hidden on known); the known
    coordinates of the output are x's exactly."""
    schedule = small_schedule(0.95, 0.02)  # T = 1: level 0 is the untethered top
    cov = np.linalg.inv(precision_matrix())
    ebm = gaussian_ebm(schedule, [0.4 * np.linalg.eigvalsh(cov).min()])
    n = 4096
    key = jax.random.key(5)
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, D))
    mask = jnp.broadcast_to(jnp.asarray(KNOWN, jnp.float32), (n, D))
    out = eqx.filter_jit(inpaint)(ebm, MALA(150), x, mask, example_keys(key, n))
    out, x = np.asarray(out, np.float64), np.asarray(x, np.float64)
    np.testing.assert_array_equal(out[:, KNOWN == 1], x[:, KNOWN == 1])
    abar0, sigmabar0 = float(schedule.abar[0]), float(schedule.sigmabar[0])
    mean, schur = conditional(cov, np.broadcast_to(MEAN, (n, D)), abar0 * x)
    u, k = KNOWN == 0, KNOWN == 1
    gain = cov[np.ix_(u, k)] @ np.linalg.inv(cov[np.ix_(k, k)])
    check_gaussian(out[:, u], mean, schur + sigmabar0**2 * gain @ gain.T, "one level")
    with pytest.raises(AssertionError):  # the noise of the known path is visible
        check_gaussian(out[:, u], mean, schur, "without the path's noise")


def exact_gaussian_model(schedule: Schedule, ratio: float) -> ConditionalEBM:
    """The EBMs of data N(MEAN, C) exactly: level t's g / k_t the log-density of its variable
    y = a_out[t+1] x_t, x_t ~ N(abar_t MEAN, abar_t^2 C + sigmabar_t^2 I) (§3.4); MALA steps
    `ratio` times each level's narrowest target variance."""
    T = schedule.num_levels
    s = schedule
    a_out, abar, sigmabar, sigma, tethered = (
        np.asarray(v, np.float64) for v in (s.a_out, s.abar, s.sigmabar, s.sigma, s.tethered)
    )
    means, precisions, step_sq = [], [], []
    for t in range(T):
        cov = a_out[t + 1] ** 2 * (abar[t] ** 2 * covariance() + sigmabar[t] ** 2 * np.eye(D))
        means.append(a_out[t + 1] * abar[t] * MEAN)
        precisions.append(np.linalg.inv(cov))
        target = precisions[-1] + tethered[t + 1] * np.eye(D) / sigma[t + 1] ** 2
        step_sq.append(ratio / np.linalg.eigvalsh(target).max())
    return gaussian_ebm(schedule, step_sq, np.stack(means), np.stack(precisions))


def test_resampling_reaches_the_data_conditional():
    """Gibbs sweeps at level 0 (docs/method.md §7.8) leave the pair law p_0(x_0) q(x_1 | x_0)
    with the known values fixed invariant; its hidden marginal is p_0(x_0^u | x_0^k), since
    x_1^k depends on x_0^k alone. With the exact EBMs of Gaussian data and enough sweeps, the
    completions are N(mu_u + G (x_0^k - mu_k), Schur) with x_0's moments, and x_0^k = abar_0 x^k
    + sigmabar_0 eps adds sigmabar_0^2 G G'. Without sweeps (the plain replacement) the
    hidden variance is about 20% too high here, and the check fails."""
    schedule = small_schedule(0.995, 0.97, 0.9, 0.02)
    ebm = exact_gaussian_model(schedule, 0.4)
    n = 4096
    key = jax.random.key(6)
    x = MEAN + jax.random.normal(jax.random.fold_in(key, 1), (n, D))
    mask = jnp.broadcast_to(jnp.asarray(KNOWN, jnp.float32), (n, D))
    run = eqx.filter_jit(inpaint)  # python ints and bools are static
    keys = example_keys(key, n)
    out = np.asarray(run(ebm, MALA(60), x, mask, keys, resample=12), np.float64)
    plain = np.asarray(run(ebm, MALA(60), x, mask, keys, resample=1), np.float64)
    x = np.asarray(x, np.float64)
    np.testing.assert_array_equal(out[:, KNOWN == 1], x[:, KNOWN == 1])
    abar0, sigmabar0 = float(schedule.abar[0]), float(schedule.sigmabar[0])
    cov0 = abar0**2 * covariance() + sigmabar0**2 * np.eye(D)
    mean, schur = conditional(cov0, np.broadcast_to(abar0 * MEAN, (n, D)), abar0 * x)
    u, k = KNOWN == 0, KNOWN == 1
    gain = cov0[np.ix_(u, k)] @ np.linalg.inv(cov0[np.ix_(k, k)])
    check_gaussian(out[:, u], mean, schur + sigmabar0**2 * gain @ gain.T, "12 sweeps")
    with pytest.raises(AssertionError, match="second moments"):
        check_gaussian(plain[:, u], mean, schur + sigmabar0**2 * gain @ gain.T, "no sweeps")


@pytest.fixture(scope="module")
def mlp_ebm():
    schedule = drl_linear_schedule(3, 1e-4, 0.02, 1000)
    net = random_mlp(jax.random.key(7), dim=D)
    return ConditionalEBM(net, schedule, jnp.full(3, 1e-3), jnp.full(3, 1e-3))


def test_known_pixels_exact_and_hidden_truth_unread(mlp_ebm):
    """The output's known pixels are the truth bit for bit, with and without Tweedie's step;
    the truth's hidden pixels are never read (changing them changes nothing), and the hidden
    pixels were sampled (they differ from the truth)."""
    n = 8
    key = jax.random.key(8)
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, D))
    mask = jnp.asarray(make_mask("random_half", n, (2, 2, 1), key).reshape(n, D))
    keys = example_keys(key, n)
    run = eqx.filter_jit(inpaint)
    for denoise in (False, True):
        out = run(mlp_ebm, ULA(5, 1.0), x, mask, keys, denoise)
        known = np.asarray(mask) == 1
        np.testing.assert_array_equal(np.asarray(out)[known], np.asarray(x)[known])
        assert np.all(np.asarray(out)[~known] != np.asarray(x)[~known])
        other = run(mlp_ebm, ULA(5, 1.0), x + 10.0 * (1 - mask), mask, keys, denoise)
        np.testing.assert_array_equal(np.asarray(other), np.asarray(out))


def test_empty_mask_is_generation(mlp_ebm):
    """With nothing known, inpaint is `generate` from the same keys (x_T from tag T)."""
    n, T = 6, mlp_ebm.schedule.num_levels
    keys = example_keys(jax.random.key(9), n)
    x = jnp.zeros((n, D))
    out = eqx.filter_jit(inpaint)(mlp_ebm, ULA(4, 1.0), x, jnp.zeros((n, D)), keys)
    x_top = per_example_normal(keys, T, x)
    expected = eqx.filter_jit(generate)(mlp_ebm, ULA(4, 1.0), x_top, keys)[0]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_inpaint_many_independent_of_chunk(mlp_ebm):
    n = 7
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, D)).astype(np.float32)
    mask = np.broadcast_to(KNOWN, (n, D)).astype(np.float32)
    key = jax.random.key(10)
    a = inpaint_many(mlp_ebm, ULA(3, 1.0), key, x, mask, chunk=3)
    b = inpaint_many(mlp_ebm, ULA(3, 1.0), key, x, mask, chunk=7)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert a.shape == (n, D)


def test_forward_path_moments():
    """x_t = abar_t x + sigmabar_t eps marginally, and Cov(x_t, x_{t+1}) = a_{t+1} sigmabar_t^2
    (a draw of the Markov forward process, docs/method.md §2.6)."""
    schedule = drl_linear_schedule(4, 1e-4, 0.02, 1000)
    n = 20000
    x = jnp.full((n, 1), 0.7)
    path = np.asarray(forward_path(schedule, x, example_keys(jax.random.key(11), n)))[..., 0]
    abar, sigmabar, a = (
        np.asarray(v, np.float64) for v in (schedule.abar, schedule.sigmabar, schedule.a)
    )
    assert path.shape == (5, n)
    for i in range(5):
        assert abs(path[i].mean() - 0.7 * abar[i]) < Z * sigmabar[i] / math.sqrt(n)
        assert abs(path[i].var() / sigmabar[i] ** 2 - 1) < Z * math.sqrt(2 / n)
    for i in range(4):
        cov = np.mean((path[i] - path[i].mean()) * (path[i + 1] - path[i + 1].mean()))
        assert abs(cov - a[i + 1] * sigmabar[i] ** 2) < Z * sigmabar[i] * sigmabar[
            i + 1
        ] / math.sqrt(n)


# ---- masks, baselines, metrics ----------------------------------------------------------------


def test_masks_hide_the_named_region():
    """1 = known. right_half hides columns 4..7, bottom_half rows 4..7, centre_square rows and
    columns 2..5; random_half 32 pixels per image, its own per image, reproducible."""
    key = jax.random.key(12)
    masks = {name: make_mask(name, 5, (8, 8, 1), key)[..., 0] for name in MASKS}
    expected = np.ones((8, 8))
    expected[:, 4:] = 0
    np.testing.assert_array_equal(masks["right_half"], np.broadcast_to(expected, (5, 8, 8)))
    np.testing.assert_array_equal(masks["bottom_half"], np.broadcast_to(expected.T, (5, 8, 8)))
    centre = np.ones((8, 8))
    centre[2:6, 2:6] = 0
    np.testing.assert_array_equal(masks["centre_square"], np.broadcast_to(centre, (5, 8, 8)))
    random = masks["random_half"]
    assert set(np.unique(random)) == {0.0, 1.0}
    np.testing.assert_array_equal(random.sum((1, 2)), 32)
    assert len({r.tobytes() for r in random}) == 5
    np.testing.assert_array_equal(make_mask("random_half", 5, (8, 8, 1), key)[..., 0], random)
    assert make_mask("right_half", 2, (8, 8, 3), key).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("left_half", 2, (8, 8, 1), key)


def test_baselines_against_a_loop():
    rng = np.random.default_rng(1)
    train = rng.uniform(-1, 1, (40, 4, 4, 1))
    x = rng.uniform(-1, 1, (6, 4, 4, 1))
    x[0] = train[17] + 0.01 * (np.arange(16).reshape(4, 4, 1) >= 8)  # its bottom half off
    mask = (rng.uniform(size=(6, 4, 4, 1)) < 0.5).astype(np.float64)
    mask[0] = np.arange(16).reshape(4, 4, 1) < 8  # top half known: train[17] is nearest
    nn = nearest_neighbour_fill(x, mask, train)
    mean = mean_image_fill(x, mask, train)
    for i in range(6):
        known = mask[i] == 1
        dists = [np.sum((x[i][known] - t[known]) ** 2) for t in train]
        j = int(np.argmin(dists))
        expected = np.where(known, x[i], train[j])
        np.testing.assert_allclose(nn[i], expected, rtol=1e-12)
        np.testing.assert_allclose(mean[i], np.where(known, x[i], train.mean(0)), rtol=1e-12)
        err = [(nn[i][p] - x[i][p]) ** 2 for p in zip(*np.nonzero(~known), strict=True)]
        np.testing.assert_allclose(
            hidden_mse(nn[i : i + 1], x[i : i + 1], mask[i : i + 1]), np.mean(err)
        )
    np.testing.assert_array_equal(nn[0], np.where(mask[0] == 1, x[0], train[17]))
    stacked = np.stack([nn, mean], axis=1)  # (N, 2, *D): completions per image
    np.testing.assert_allclose(
        hidden_mse(stacked, x, mask),
        np.stack([hidden_mse(nn, x, mask), hidden_mse(mean, x, mask)], 1),
    )


def test_mask_metrics_and_comparison():
    """Accuracy counts completions whose class is the label (here the sign of a hidden pixel);
    the model beats a baseline only when the paired interval of the error difference is
    below 0."""
    rng = np.random.default_rng(2)
    n, c = 60, 3
    truth = rng.uniform(-1, 1, (n, 2, 2, 1))
    mask = np.ones_like(truth)
    mask[:, 1] = 0.0  # the second row hidden

    def classify(images):
        return (np.asarray(images)[:, 1, 0, 0] > 0).astype(int)

    labels = classify(truth)
    noise = rng.normal(size=(n, c, 2, 2, 1)) * (1 - mask[:, None])
    completions = truth[:, None] + 0.5 * noise
    far = truth + 1.0 * (1 - mask)
    found = mask_metrics(truth, labels, mask, completions, {"far": far}, classify)
    expected = (classify(completions.reshape(n * c, 2, 2, 1)) == np.repeat(labels, c)).mean()
    assert found["accuracy"]["model"]["mean"] == pytest.approx(expected)
    assert found["accuracy"]["far"]["mean"] == pytest.approx(np.mean(classify(far) == labels))
    assert found["accuracy"]["far"]["n"] == n
    assert found["hidden_pixels_per_image"] == 2.0
    assert found["hidden_mse"]["far"]["mean"] == pytest.approx(1.0)
    mse = (0.5 * noise[:, :, 1]) ** 2
    assert found["hidden_mse"]["model"]["mean"] == pytest.approx(mse.mean())
    assert found["model_minus_baseline"]["far"]["model_lower"] and found["beats_baselines"]
    worse = mask_metrics(truth, labels, mask, completions, {"truth": truth}, classify)
    assert not worse["beats_baselines"]  # the truth itself cannot be beaten
    same = compare(np.ones(n), np.ones(n) + 0.01 * rng.normal(size=n))
    assert not same["model_lower"]


def test_clip_to_range_counts_hidden_pixels_and_never_raises_error():
    """Clipping to [-1, 1] moves exactly the pixels outside it, the share counts hidden ones
    only, and the error against a truth inside the box falls wherever a pixel was outside."""
    rng = np.random.default_rng(3)
    n, c = 8, 2
    truth = rng.uniform(-1, 1, (n, 3, 3, 1))
    mask = (rng.uniform(size=(n, 3, 3, 1)) < 0.5).astype(np.float64)
    completions = rng.normal(scale=1.5, size=(n, c, 3, 3, 1))
    completions[:, :, 0, 0, 0] = 5.0  # outside; counted only where pixel (0, 0) is hidden
    clipped, share = clip_to_range(completions, mask)
    assert clipped.min() >= -1.0 and clipped.max() <= 1.0
    inside = np.abs(completions) <= 1.0
    np.testing.assert_array_equal(clipped[inside], completions[inside])
    hidden = [completions[i, j][mask[i] == 0] for i in range(n) for j in range(c)]
    outside = sum(int(np.sum(np.abs(h) > 1.0)) for h in hidden)
    assert share == pytest.approx(outside / sum(h.size for h in hidden))
    assert 0.0 < share < 1.0
    before, after = hidden_mse(completions, truth, mask), hidden_mse(clipped, truth, mask)
    assert np.all(after <= before + 1e-15)
    moved = np.array([[np.any(np.abs(completions[i, j][mask[i] == 0]) > 1.0) for j in range(c)]
                      for i in range(n)])  # fmt: skip
    assert moved.any() and not moved.all()
    assert np.all(after[moved] < before[moved]) and np.all(after[~moved] == before[~moved])
