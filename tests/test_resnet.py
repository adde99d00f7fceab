"""Spectral normalization and the image energy network (REFERENCE section 6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_mlp

from drlx.models import ResNetEnergy
from drlx.models.layers import Conv2d, Dense, spectral_norm_estimate, weight_matrix
from drlx.models.resnet import ResidualBlock
from drlx.spec.build import build_network
from drlx.spec.model import ResNetEnergy as ResNetSpec

LAYERS = {
    "dense": lambda key: Dense(24, 40, True, key),
    "conv": lambda key: Conv2d(8, 16, 3, True, key),
}


def largest_singular_value(weight) -> float:
    return float(np.linalg.svd(np.asarray(weight_matrix(weight), np.float64), compute_uv=False)[0])


@eqx.filter_jit
def iterate(layer, n: int = 300):
    return jax.lax.fori_loop(0, n, lambda _, m: m.power_iteration(), layer)


@pytest.mark.parametrize("kind", LAYERS)
def test_power_iteration_converges_to_largest_singular_value(kind, key):
    layer = LAYERS[kind](key)
    expected = largest_singular_value(layer.weight)
    first = float(spectral_norm_estimate(layer.weight, layer.u))
    assert first < expected * (1 - 1e-2)  # a random u underestimates sigma_max
    converged = iterate(layer)
    estimate = float(spectral_norm_estimate(converged.weight, converged.u))
    np.testing.assert_allclose(estimate, expected, rtol=1e-3)
    # the normalized weight has spectral norm 1
    np.testing.assert_allclose(largest_singular_value(converged.normalized_weight()), 1, rtol=1e-3)


@pytest.mark.parametrize("kind", LAYERS)
def test_no_gradient_through_u(kind, key):
    layer = LAYERS[kind](key)
    x = jax.random.normal(jax.random.key(1), (3, 5, 5, 8) if kind == "conv" else (3, 24))
    grads = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))(layer)
    assert np.all(np.asarray(grads.u) == 0)
    assert np.any(np.asarray(grads.weight) != 0)


def test_forward_uses_fixed_u_until_power_iteration(key):
    layer = Conv2d(4, 6, 3, True, key)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    np.testing.assert_array_equal(layer(x), layer(x))
    stepped = layer.power_iteration()
    np.testing.assert_array_equal(stepped.weight, layer.weight)
    assert not np.allclose(stepped.u, layer.u)
    unnormalized = Conv2d(4, 6, 3, False, key)
    assert unnormalized.u is None and unnormalized.power_iteration() is unnormalized


def randomized(net: ResNetEnergy) -> ResNetEnergy:
    """The network with every residual branch switched on (per-channel scale 1 instead of
    ~0) and converged spectral norms, so that g depends on every layer."""
    blocks = [b for stage in net.stages for b in stage]
    net = eqx.tree_at(
        lambda n: [b.conv2.scale for stage in n.stages for b in stage],
        net,
        [jnp.ones_like(b.conv2.scale) for b in blocks],
    )
    return iterate(net, 20)


SMALL = {
    "digits": dict(shape=(8, 8, 1), width=8, blocks=2, mults=(1, 2)),
    "cifar": dict(shape=(32, 32, 3), width=8, blocks=1, mults=(1, 2, 2, 2)),
}


@pytest.fixture(scope="module", params=list(SMALL))
def case(request):
    c = SMALL[request.param]
    net = ResNetEnergy(
        c["shape"][-1], c["width"], c["blocks"], c["mults"], 16, True, jax.random.key(3)
    )
    y = jax.random.uniform(jax.random.key(4), (5, *c["shape"]), minval=-1, maxval=1)
    t = jnp.array([0, 3, 7, 1, 5])
    return net, randomized(net), y, t


def test_shapes_finite_and_context(case):
    net, rnet, y, t = case
    for n in (net, rnet):
        g = n(y, t)
        assert g.shape == (5,) and g.dtype == jnp.float32
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(n.energy(y, n.embed(t)), g, rtol=1e-6, atol=1e-6)


def test_batch_independence(case):
    _, rnet, y, t = case
    g = jax.jit(rnet.__call__)(y, t)
    single = jax.jit(lambda y1, t1: rnet(y1, t1))
    for i in range(y.shape[0]):
        np.testing.assert_allclose(
            single(y[i : i + 1], t[i : i + 1])[0], g[i], rtol=1e-5, atol=1e-5
        )


def test_output_depends_on_level(case):
    net, rnet, y, _ = case
    for n in (net, rnet):
        g0 = n(y, jnp.zeros(5, jnp.int32))
        g1 = n(y, jnp.full(5, 6, jnp.int32))
        assert np.max(np.abs(g0 - g1)) > 1e-3 * np.max(np.abs(g0))


def test_gradient_in_input_is_finite_and_nonzero(case):
    _, rnet, y, t = case
    grad = jax.grad(lambda y_: jnp.sum(rnet(y_, t)))(y)
    assert grad.shape == y.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("channels", [(6, 6), (6, 12)], ids=["identity", "conv_shortcut"])
def test_residual_block_starts_as_its_shortcut(channels, key):
    block = ResidualBlock(*channels, 16, True, key)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, channels[0]))
    bias = jax.random.normal(jax.random.key(2), (2, channels[1]))
    skip = x if block.shortcut is None else block.shortcut(x)
    out = block(x, bias)
    np.testing.assert_allclose(out, skip, atol=1e-6 * float(jnp.max(jnp.abs(skip))))
    # ... but the residual branch is live: its scale gets a gradient.
    grads = eqx.filter_grad(lambda b: jnp.sum(b(x, bias) ** 2))(block)
    assert np.any(np.asarray(grads.conv2.scale) != 0)


def test_build_from_spec_and_mlp_interface(key):
    spec = ResNetSpec(kind="resnet", width=8, blocks_per_resolution=1, channel_mults=(1, 2))
    net = build_network(spec, (8, 8, 1), key)
    assert isinstance(net, ResNetEnergy) and len(net.stages) == 2
    assert net(jnp.zeros((2, 8, 8, 1)), jnp.array([0, 1])).shape == (2,)
    mlp = random_mlp(key)
    assert mlp.power_iteration() is mlp
