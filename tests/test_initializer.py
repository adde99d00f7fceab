"""CDRL's initializer networks (docs/method.md §11): MLPInitializer and UNetInitializer."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlx.models.base import AbstractInitializer
from drlx.models.initializer import MLPInitializer
from drlx.models.unet import GroupNorm, UNetInitializer

T = 6


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0):
    """Test inputs from NumPy (XLA:CPU compiles a multi-axis jax.random draw slowly)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def cdrl_level_values(num_levels: int = T) -> np.ndarray:
    """CDRL's continuous time of each level: 1000 arctan(exp(-logSNR/2)) / (pi/2), with the
    cosine logSNR schedule (lmin -5.1, lmax 9.8) at u = (t + 1) / T (docs/method.md §2.5)."""
    d = math.atan(math.exp(-9.8 / 2))
    c = math.atan(math.exp(5.1 / 2)) - d
    logsnr = -2 * np.log(np.tan(c * np.arange(1, num_levels + 1) / num_levels + d))
    return 1000 * np.arctan(np.exp(-logsnr / 2)) / (np.pi / 2)


def make_mlp(dropout: float = 0.1) -> MLPInitializer:
    return MLPInitializer(
        64, 32, 3, 16, "silu", jnp.arange(T, dtype=jnp.float32),
        key=jax.random.key(1), dropout=dropout,
    )  # fmt: skip


def make_unet() -> UNetInitializer:
    # two resolutions (8x8, 4x4; widths 8, 16), attention at 4x4, 4 groups of 2+ channels
    return UNetInitializer(
        3, 8, (1, 2), 1, (4,), 8, 0.1, 4, jnp.asarray(cdrl_level_values()),
        key=jax.random.key(2),
    )  # fmt: skip


NETS = {"mlp": make_mlp, "unet": make_unet}
SHAPES = {"mlp": (8, 8, 1), "unet": (8, 8, 3)}  # the MLP gets 8x8 digits, flattened inside


def output_layer(net):
    return net.out if isinstance(net, MLPInitializer) else net.conv_out


def first_layer(net):
    return net.layers[0] if isinstance(net, MLPInitializer) else net.conv_in


def with_output_layer(net, scale: float = 0.3, seed: int = 11):
    """The network with a random (non-zero) output layer weight."""
    weight = output_layer(net).weight
    return eqx.tree_at(lambda n: output_layer(n).weight, net, normal(seed, weight.shape, scale))


def perturbed(net, scale: float = 0.3, seed: int = 12):
    """The network with every zero-initialised weight (>= 2 axes, all zero: the output layer,
    the U-Net's residual conv2 and attention projections) replaced by random values, so that
    every part of the network reaches the output."""
    rng = np.random.default_rng(seed)

    def fill(x):
        if eqx.is_inexact_array(x) and x.ndim >= 2 and not np.any(np.asarray(x)):
            return jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)
        return x

    return jax.tree.map(fill, net)


@eqx.filter_jit
def mean(net, x, t, key=None):
    return net.mean(x, t, key)


@pytest.fixture(scope="module", params=list(NETS))
def case(request):
    net = NETS[request.param]()
    x = jnp.asarray(
        np.random.default_rng(3).uniform(-1, 1, (5, *SHAPES[request.param])), jnp.float32
    )
    t = jnp.array([0, 3, 5, 1, 2])
    return net, x, t


def test_interface_and_identity_at_initialisation(case):
    """The output layer starts at zero: mean(x~, t) == x~ exactly, at every level, with and
    without dropout."""
    net, x, _ = case
    assert isinstance(net, AbstractInitializer)
    for level in range(T):
        t = jnp.full((x.shape[0],), level, jnp.int32)
        m = mean(net, x, t)
        assert m.shape == x.shape and m.dtype == jnp.float32
        np.testing.assert_array_equal(m, x)
    np.testing.assert_array_equal(mean(net, x, jnp.arange(5) % T, jax.random.key(7)), x)


def test_output_depends_on_level_once_perturbed(case):
    net, x, _ = case
    zeros, fives = jnp.zeros(5, jnp.int32), jnp.full(5, 5, jnp.int32)
    out = with_output_layer(net)
    m0 = mean(out, x, zeros)
    assert np.max(np.abs(m0 - x)) > 1e-2  # the output layer acts
    if isinstance(net, UNetInitializer):
        # every residual branch and attention starts at zero too: with only the output layer
        # changed, the U-Net is still independent of the level ...
        np.testing.assert_allclose(mean(out, x, fives), m0, atol=1e-6)
        out = perturbed(net)  # ... and with its residual branches on, it depends on it
        m0 = mean(out, x, zeros)
    m5 = mean(out, x, fives)
    diff = np.max(np.abs(m5 - m0), axis=tuple(range(1, x.ndim)))
    assert np.all(diff > 1e-3), diff  # for every example
    # distinct levels, distinct outputs: each level against level 0
    for level in range(1, T):
        m = mean(out, x, jnp.full(5, level, jnp.int32))
        assert np.max(np.abs(m - m0)) > 1e-3, level


def test_per_example_independence(case):
    """GroupNorm and attention work per example: the mean of example i is the same alone as
    inside a batch (of different examples and levels)."""
    net, x, t = case
    net = perturbed(net)
    batch = mean(net, x, t)
    for i in range(x.shape[0]):
        single = mean(net, x[i : i + 1], t[i : i + 1])
        np.testing.assert_allclose(single[0], batch[i], atol=1e-5)
    # and a changed example leaves the others unchanged
    changed = mean(net, x.at[0].set(-x[0]), t)
    np.testing.assert_allclose(changed[1:], batch[1:], atol=1e-5)
    assert np.max(np.abs(changed[0] - batch[0])) > 1e-3


def test_dropout_only_with_a_key(case):
    net, x, t = case
    net = perturbed(net)
    k1, k2 = jax.random.key(20), jax.random.key(21)
    plain = mean(net, x, t)
    np.testing.assert_array_equal(mean(net, x, t), plain)  # key=None: deterministic
    a, a_again, b = mean(net, x, t, k1), mean(net, x, t, k1), mean(net, x, t, k2)
    np.testing.assert_array_equal(a, a_again)
    assert np.max(np.abs(a - b)) > 1e-3
    assert np.max(np.abs(a - plain)) > 1e-3
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))


def test_mlp_without_dropout_ignores_the_key():
    net = perturbed(make_mlp(dropout=0.0))
    x, t = normal(4, (3, 64)), jnp.array([0, 2, 4])
    np.testing.assert_array_equal(mean(net, x, t, jax.random.key(5)), mean(net, x, t))


def test_gradients_flow(case):
    """Parameter gradients of a scalar loss of the mean: finite; non-zero for the output layer
    at initialisation, and for the first layer once the output layer is non-zero; zero for the
    (untrained) level values."""
    net, x, t = case
    target = normal(9, x.shape)

    @eqx.filter_jit
    def grads(n):
        return eqx.filter_grad(lambda n_: jnp.sum((n_.mean(x, t) - target) ** 2))(n)

    for n in (net, with_output_layer(net)):
        g = grads(n)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
        assert np.any(np.asarray(output_layer(g).weight) != 0)
        np.testing.assert_array_equal(g.level_values, 0)
    assert np.any(np.asarray(first_layer(g).weight) != 0)


def unet_parameters_by_hand(c: int, w: int, blocks: int, attn_levels: list[int]) -> int:
    """The parameter count of UNetInitializer with equal widths at three resolutions, from the
    architecture (convs and dense layers with biases, GroupNorm scale and shift)."""
    e = 4 * w  # level embedding width

    def res(i, o):
        norms = 2 * i + 2 * o
        convs = 9 * i * o + o + 9 * o * o + o
        return norms + convs + e * 2 * o + 2 * o + (i * o + o if i != o else 0)

    attention = 2 * w + 3 * w * w + 3 * w + w * w + w
    embed = w * e + e + e * e + e
    down = 3 * blocks * res(w, w) + 2 * res(w, w) + blocks * attention * len(attn_levels)
    mid = 2 * res(w, w) + attention
    up = 3 * (blocks + 1) * res(2 * w, w) + 2 * res(w, w)
    up += (blocks + 1) * attention * len(attn_levels)
    ends = 9 * c * w + w + 2 * w + 9 * w * c + c
    return embed + down + mid + up + ends


def test_unet_cifar10_parameter_count():
    net = UNetInitializer(
        3, 64, (1, 1, 1), 3, (16, 8), 32, 0.1, 32, jnp.asarray(cdrl_level_values()),
        key=jax.random.key(0),
    )  # fmt: skip
    total = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    count = total - net.level_values.size
    assert abs(count - 3.8e6) < 0.1 * 3.8e6, count  # CDRL's 3.8 M
    assert count == unet_parameters_by_hand(3, 64, 3, [16, 8]) == 3_769_795


def test_group_norm_matches_equinox():
    """The channels-last GroupNorm equals Equinox's (channels-first, one example at a time),
    with a non-trivial scale and shift."""
    x = normal(6, (3, 5, 4, 12), 2.0) + 1.0
    ours = GroupNorm(4, 12)
    ours = eqx.tree_at(lambda g: (g.weight, g.bias), ours, (normal(7, (12,)), normal(8, (12,))))
    reference = eqx.nn.GroupNorm(4, 12, eps=1e-6)
    reference = eqx.tree_at(lambda g: (g.weight, g.bias), reference, (ours.weight, ours.bias))
    expected = jax.vmap(lambda xi: reference(jnp.moveaxis(xi, -1, 0)))(x)
    np.testing.assert_allclose(ours(x), jnp.moveaxis(expected, 1, -1), atol=1e-5)
    assert GroupNorm(32, 8).groups == 8  # capped at the channel count
    with pytest.raises(ValueError):
        GroupNorm(4, 6)


def test_weight_decay_spares_the_level_inputs(case):
    """AdamW's decoupled decay shrinks every weight by lr * wd per step, but `level_values`
    are constants of the network (their gradient is zero): they must stay as they are."""
    from pydantic import TypeAdapter

    from drlx.builder import initializer_optimizer
    from drlx.spec.initializer import InitializerSpec

    net, _, _ = case
    spec = TypeAdapter(InitializerSpec).validate_python(
        {"kind": "mlp", "learning_rate": 0.1, "weight_decay": 0.5}
    )
    opt = initializer_optimizer(spec)
    params = eqx.filter(net, eqx.is_inexact_array)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    new = eqx.apply_updates(net, updates)
    assert np.any(np.asarray(net.level_values) != 0)
    np.testing.assert_array_equal(new.level_values, net.level_values)
    before, after = first_layer(net).weight, first_layer(new).weight
    np.testing.assert_allclose(after, before * (1 - 0.1 * 0.5), rtol=1e-5)
