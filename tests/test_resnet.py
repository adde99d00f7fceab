"""Spectral normalization and the image energy network (docs/method.md §6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlx.builder import network_factory
from drlx.diffusion import continuous_time, drl_linear_schedule
from drlx.models.layers import (
    Conv2d,
    Dense,
    add_example_bias,
    conv2d,
    spectral_norm_estimate,
    weight_matrix,
)
from drlx.models.mlp import MLPEnergy
from drlx.models.resnet import ResidualBlock, ResNetEnergy
from drlx.spec.model import ResNetEnergy as ResNetSpec

LAYERS = {
    "dense": lambda key: Dense(24, 40, True, key),
    "conv": lambda key: Conv2d(8, 16, 3, True, key),
}


def normal(seed: int, shape: tuple[int, ...]):
    """Test inputs from NumPy (XLA:CPU compiles a multi-axis jax.random draw slowly)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


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
    x = normal(1, (3, 5, 5, 8) if kind == "conv" else (3, 24))
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x)))))(layer)
    assert np.all(np.asarray(grads.u) == 0)
    assert np.any(np.asarray(grads.weight) != 0)


def test_forward_uses_fixed_u_until_power_iteration(key):
    layer = Conv2d(4, 6, 3, True, key)
    x = normal(1, (2, 6, 6, 4))
    forward = eqx.filter_jit(lambda m: m(x))
    np.testing.assert_array_equal(forward(layer), forward(layer))
    stepped = eqx.filter_jit(lambda m: m.power_iteration())(layer)
    np.testing.assert_array_equal(stepped.weight, layer.weight)
    assert not np.allclose(stepped.u, layer.u)
    unnormalized = Conv2d(4, 6, 3, False, key)
    assert unnormalized.u is None and unnormalized.power_iteration() is unnormalized


def randomized(net: ResNetEnergy) -> ResNetEnergy:
    """The network with every residual branch switched on (per-channel scale 1 instead of
    ~0), so that g depends on every layer."""
    return eqx.tree_at(
        lambda n: [b.conv2.scale for stage in n.stages for b in stage],
        net,
        [jnp.ones_like(b.conv2.scale) for stage in net.stages for b in stage],
    )


@eqx.filter_jit
def outputs(net, y, t):
    """g by __call__ and by energy(embed), and grad_y of sum g."""
    g = net(y, t)
    return g, net.energy(y, net.embed(t)), jax.grad(lambda y_: jnp.sum(net(y_, t)))(y)


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
    y = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (5, *c["shape"])), jnp.float32)
    t = jnp.array([0, 3, 7, 1, 5])
    return net, randomized(net), y, t


def test_shapes_finite_context_and_input_gradient(case):
    net, rnet, y, t = case
    for n in (net, rnet):
        g, g_context, grad = outputs(n, y, t)
        assert g.shape == (5,) and g.dtype == jnp.float32
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g_context, g, rtol=1e-6, atol=1e-6)
        assert grad.shape == y.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_precomputed_network_is_the_same_function(case):
    """precompute() (kernels normalized, scaled and flipped once, for chains) changes neither g
    nor its input gradient, and keeps no spectral-norm state to advance."""
    _, rnet, y, t = case
    scales = lambda n: [b.conv2.scale for stage in n.stages for b in stage]  # noqa: E731
    rnet = eqx.tree_at(scales, rnet, [0.5 + jnp.arange(len(c)) / len(c) for c in scales(rnet)])
    pre = rnet.precompute()
    convs = [b.conv1 for s in pre.stages for b in s] + [pre.conv_in]
    assert all(c.u is None and c.scale is None and c.flipped is not None for c in convs)
    for got, expected in zip(outputs(pre, y, t), outputs(rnet, y, t), strict=True):
        scale = float(np.max(np.abs(expected)))  # float32 sums: errors scale with the terms
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)


def test_batch_independence(case):
    _, rnet, y, t = case
    g = outputs(rnet, y, t)[0]
    forward = eqx.filter_jit(lambda n, y_, t_: n(y_, t_))
    for i in range(y.shape[0]):
        single = forward(rnet, y[i : i + 1], t[i : i + 1])
        np.testing.assert_allclose(single[0], g[i], rtol=1e-5, atol=1e-5)


def test_output_depends_on_level(case):
    net, rnet, y, _ = case
    for n in (net, rnet):
        g0 = outputs(n, y, jnp.zeros(5, jnp.int32))[0]
        g1 = outputs(n, y, jnp.full(5, 6, jnp.int32))[0]
        assert np.max(np.abs(g0 - g1)) > 1e-3 * np.max(np.abs(g0))


@pytest.mark.parametrize("channels", [(6, 6), (6, 12)], ids=["identity", "conv_shortcut"])
def test_residual_block_starts_as_its_shortcut(channels, key):
    block = ResidualBlock(*channels, 16, True, key)
    x = normal(1, (2, 8, 8, channels[0]))
    bias = normal(2, (2, channels[1]))

    @eqx.filter_jit
    def run(b):
        skip = x if b.shortcut is None else b.shortcut(x)
        grads = eqx.filter_grad(lambda b_: jnp.sum(b_(x, bias) ** 2))(b)
        return b(x, bias), skip, grads.conv2.scale

    out, skip, scale_grad = run(block)
    np.testing.assert_allclose(out, skip, atol=1e-6 * float(jnp.max(jnp.abs(skip))))
    # ... but the residual branch is there, scaled by ~0: its scale gets a gradient
    assert np.any(np.asarray(scale_grad) != 0)


def test_build_from_spec_and_mlp_interface(key):
    spec = ResNetSpec(
        kind="resnet", width=8, blocks_per_resolution=2, channel_mults=(1, 2), embed_dim=16
    )
    schedule = drl_linear_schedule(6, 1e-4, 0.02, 1000)
    net = network_factory(spec, (8, 8, 1), schedule)(key)
    assert isinstance(net, ResNetEnergy) and [len(s) for s in net.stages] == [2, 2]
    assert net.level_values is None  # DRL's index embedding
    logsnr = network_factory(spec.model_copy(update={"level_embedding": "logsnr"}), (8, 8, 1),
                             schedule)(key)  # fmt: skip
    np.testing.assert_allclose(logsnr.level_values, continuous_time(schedule)[:-1])
    t = jnp.arange(4, dtype=jnp.int32)
    assert not np.allclose(net.embed(t)[-1], logsnr.embed(t)[-1])
    assert all(b.conv1.u is not None for s in net.stages for b in s)
    # the network's power_iteration advances every u and nothing else
    stepped = eqx.filter_jit(lambda n: n.power_iteration())(net)
    is_u = lambda path, _: path[-1].name == "u"  # noqa: E731
    for (path, before), after in zip(
        jax.tree_util.tree_leaves_with_path(net), jax.tree.leaves(stepped), strict=True
    ):
        assert is_u(path, before) != np.array_equal(before, after), path
    # MLPEnergy has no spectral norm: power_iteration is the identity
    sentinel = object()
    assert MLPEnergy.power_iteration(sentinel) is sentinel


def numpy_conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Independent float64 'SAME' cross-correlation, NHWC x HWIO, by explicit shifts."""
    kh, kw = w.shape[:2]
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[-1]))
    for r in range(kh):
        for c in range(kw):
            out += np.einsum("nhwi,io->nhwo", xp[:, r : r + h, c : c + wd], w[r, c])
    return out


@pytest.mark.parametrize("in_channels", [1, 3, 16], ids=lambda c: f"in{c}")
def test_conv2d_matches_numpy_with_gradients(in_channels):
    """conv2d (XLA's convolution with a hand-written VJP) against an independent computation:
    the value, and the input and kernel gradients of <conv(x, w), r>, which are the
    correlation of r with the flipped kernel and the correlation of x with r."""
    x, w, r = (
        normal(0, (2, 6, 8, in_channels)),
        normal(1, (3, 3, in_channels, 5)),
        normal(2, (2, 6, 8, 5)),
    )
    x64, w64, r64 = (np.asarray(a, np.float64) for a in (x, w, r))
    np.testing.assert_allclose(conv2d(x, w), numpy_conv_same(x64, w64), rtol=1e-5, atol=1e-5)
    dx, dw = jax.grad(lambda x_, w_: jnp.sum(conv2d(x_, w_) * r), argnums=(0, 1))(x, w)
    flipped = np.swapaxes(w64[::-1, ::-1], 2, 3)
    np.testing.assert_allclose(dx, numpy_conv_same(r64, flipped), rtol=1e-5, atol=1e-4)
    xp = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dw_expected = np.stack([
        np.stack([np.einsum("nhwi,nhwo->io", xp[:, a : a + 6, b : b + 8], r64) for b in range(3)])
        for a in range(3)
    ])  # fmt: skip
    np.testing.assert_allclose(dw, dw_expected, rtol=1e-5, atol=1e-4)


def test_add_example_bias_gradients_equal_the_broadcast_adds():
    """The custom gradient of the per-example bias (a dot with ones) against autodiff of the
    broadcast add and against float64 numpy sums, under jit, vmap and a second derivative."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 4, 6)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((3, 5, 4, 6)), jnp.float32)

    def loss(add, x_, b_):
        return jnp.sum(u * jnp.sin(add(x_, b_)))

    plain = lambda x_, b_: x_ + b_[:, None, None, :]  # noqa: E731
    np.testing.assert_array_equal(add_example_bias(x, b), plain(x, b))
    got = jax.jit(jax.grad(lambda x_, b_: loss(add_example_bias, x_, b_), (0, 1)))(x, b)
    want = jax.grad(lambda x_, b_: loss(plain, x_, b_), (0, 1))(x, b)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    cot = np.asarray(u, np.float64) * np.cos(
        np.asarray(x, np.float64) + np.asarray(b)[:, None, None]
    )
    np.testing.assert_allclose(got[1], cot.sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    # vmap over a leading axis, and the gradient of a gradient (reverse over reverse)
    xs, bs = jnp.stack([x, 2 * x]), jnp.stack([b, -b])
    vg = jax.vmap(jax.grad(lambda x_, b_: loss(add_example_bias, x_, b_), 1))(xs, bs)
    vw = jax.vmap(jax.grad(lambda x_, b_: loss(plain, x_, b_), 1))(xs, bs)
    np.testing.assert_allclose(vg, vw, rtol=1e-5, atol=1e-6)
    second = lambda add: jax.grad(  # noqa: E731
        lambda b_: jnp.sum(jax.grad(lambda x_: loss(add, x_, b_))(x) ** 2)
    )(b)
    np.testing.assert_allclose(second(add_example_bias), second(plain), rtol=1e-4, atol=1e-5)
