"""Small building blocks shared by the energy networks: activations, the level embedding,
channels-last convolution and pooling, and spectrally normalized dense and conv layers."""

import copy
import functools
import math
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

T = TypeVar("T")

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
}


def sinusoidal_embedding(t: Float[Array, " *B"], dim: int, max_period: float = 10_000.0) -> Array:
    """Transformer-style embedding of a (level) index: [sin(t w_k), cos(t w_k)], w_k geometric.

    Arguments:
        t: level indices (any shape), as floats.
        dim: embedding size (even).
        max_period: longest period of the frequencies.

    Returns:
        Array of shape t.shape + (dim,).
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def level_inputs(level_values: Float[Array, " T"] | None, t: Int[Array, " N"]) -> Array:
    """The value fed to the level embedding for each level of `t`: `level_values[t]`, or the
    level index t itself when `level_values` is None.

    `level_values` is a constant of the network (arange(T), or CDRL's continuous time
    1000 arctan(exp(-logSNR/2)) / (pi/2)): read under stop_gradient, so it is never trained.
    """
    if level_values is None:
        return t
    return jax.lax.stop_gradient(level_values)[t]


class ConditionEmbedding(eqx.Module):
    """A condition's embedding (docs/method.md §12): sum_m E_m[c_m], one table per slot m of
    the condition vector with n_m + 1 rows, the last one the slot's null token. Added to the
    level embedding of a network, it makes the network conditional; the all-null condition is
    the unconditional model."""

    cardinalities: tuple[int, ...] = eqx.field(static=True)
    tables: tuple[Float[Array, " V E"], ...]

    def __init__(self, cardinalities: tuple[int, ...], dim: int):
        """
        Arguments:
            cardinalities: n_m of every slot (classes, or 2 for a binary attribute).
            dim: the embedding size (the level embedding's).

        The tables start at zero, so that a conditional network starts as its unconditional
        one; `with_random_tables` draws them instead.
        """
        self.cardinalities = tuple(int(n) for n in cardinalities)
        self.tables = tuple(jnp.zeros((n + 1, dim)) for n in self.cardinalities)

    def __call__(self, c: Int[Array, " N M"] | None, n: int) -> Float[Array, " N E"]:
        """The embeddings of a batch of n conditions; None: the null condition for all n."""
        if c is None:
            c = jnp.broadcast_to(jnp.asarray(self.cardinalities, jnp.int32), (n, len(self.tables)))
        return sum(table[c[:, m]] for m, table in enumerate(self.tables))


def with_random_tables(network: T, std: float, key: PRNGKeyArray) -> T:
    """The network with its condition tables drawn from N(0, std^2) (unchanged for std 0 or an
    unconditional network)."""
    if std == 0.0 or getattr(network, "condition", None) is None:
        return network
    tables = network.condition.tables
    keys = jax.random.split(key, len(tables))
    new = tuple(std * jax.random.normal(k, t.shape) for k, t in zip(keys, tables, strict=True))
    return eqx.tree_at(lambda m: m.condition.tables, network, new)


def conditioned(
    temb: Float[Array, " N E"], embedding: ConditionEmbedding | None, c: Int[Array, " N M"] | None
) -> Float[Array, " N E"]:
    """The level embedding plus the condition's (unchanged for an unconditional network, which
    refuses a condition)."""
    if embedding is None:
        if c is not None:
            raise ValueError("a condition was given to an unconditional network")
        return temb
    return temb + embedding(c, temb.shape[0])


# --- Channels-last convolution -------------------------------------------------------------------
# One batched `conv_general_dilated` in NHWC/HWIO: the fastest layout on the CPU (the other
# layouts, Equinox's Conv2d under vmap, im2col and Winograd were measured slower; see
# benchmarks/results/network.json).

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv_same(x: Array, weight: Array) -> Array:
    return jax.lax.conv_general_dilated(x, weight, (1, 1), "SAME", dimension_numbers=_CONV_DIMS)


def flip_kernel(weight: Float[Array, " kh kw I O"]) -> Float[Array, " kh kw O I"]:
    """The kernel of a stride-1 'SAME' convolution's input gradient: flipped in space, in/out
    axes swapped."""
    return jnp.swapaxes(jnp.flip(weight, (0, 1)), 2, 3)


def _conv_grads(x, weight, flipped, cotangent):
    # The input gradient of a stride-1 'SAME' convolution with an odd kernel is the same
    # convolution with `flip_kernel(weight)`. Written out because JAX's own transpose rule swaps
    # the kernel's dimension labels (HWOI), which XLA:CPU runs through a slow loop emitter
    # inside a lax.scan (a Langevin chain) instead of Eigen.
    dx = _conv_same(cotangent, flipped)
    _, weight_vjp = jax.vjp(lambda w: _conv_same(x, w), weight)  # dead code when unused
    (dw,) = weight_vjp(cotangent)
    return dx, dw


@jax.custom_vjp
def _conv(x: Array, weight: Array) -> Array:
    return _conv_same(x, weight)


_conv.defvjp(
    lambda x, weight: (_conv_same(x, weight), (x, weight)),
    lambda res, ct: _conv_grads(res[0], res[1], flip_kernel(res[1]), ct),
)


# Two custom VJPs rather than _conv_flipped(x, w, flip_kernel(w)) everywhere: routing the zero
# cotangent of a flip computed from w back into w's gradient sent XLA's algebraic simplifier
# into a loop (an error in the log at every compile of a training step).
@jax.custom_vjp
def _conv_flipped(x: Array, weight: Array, flipped: Array) -> Array:
    """_conv with flip_kernel(weight) given: a chain flips its fixed kernels once, outside its
    loop (XLA does not hoist the flip). flipped's own cotangent is zero: it only stands for a
    function of weight."""
    return _conv_same(x, weight)


_conv_flipped.defvjp(
    lambda x, weight, flipped: (_conv_same(x, weight), (x, weight, flipped)),
    lambda res, ct: (*_conv_grads(*res, ct), jnp.zeros_like(res[2])),
)


CONV_BACKENDS = ("xla", "onednn")


def conv2d(
    x: Float[Array, " N H W I"],
    weight: Float[Array, " kh kw I O"],
    bias: Array | None = None,
    flipped: Float[Array, " kh kw O I"] | None = None,
    backend: str = "xla",
) -> Float[Array, " N H W O"]:
    """Stride-1, 'SAME'-padded 2D convolution of a channels-last batch (cross-correlation).

    Reverse-mode differentiable (custom VJP, see `_conv_grads`); no forward mode (jvp).

    Arguments:
        x: inputs (N, H, W, I).
        weight: kernel (kh, kw, I, O), odd kh and kw.
        bias: optional (O,) bias.
        flipped: `flip_kernel(weight)` if already computed (None: computed here). Only XLA's
            input gradient uses it; oneDNN's backward-data pass takes the kernel itself.
        backend: "xla" (XLA's convolutions) or "onednn" (drlx.ops.conv, float32 on the CPU;
            the library must be built and loaded, see drlx.ops.conv.load).

    Returns:
        Outputs (N, H, W, O).
    """
    if weight.shape[0] % 2 == 0 or weight.shape[1] % 2 == 0:
        raise ValueError(f"conv2d needs an odd kernel size, got {weight.shape[:2]}")
    if backend == "onednn":
        from drlx.ops.conv import conv2d_onednn  # noqa: PLC0415 - only when asked for

        return conv2d_onednn(x, weight, bias)  # its backward pass gives the bias gradient
    if backend == "xla":
        y = _conv(x, weight) if flipped is None else _conv_flipped(x, weight, flipped)
    else:
        raise ValueError(f"conv2d backend must be one of {CONV_BACKENDS}, got {backend!r}")
    return y if bias is None else y + bias


@jax.custom_vjp
def add_example_bias(x: Float[Array, " N H W C"], bias: Float[Array, " N C"]) -> Array:
    """x + bias[:, None, None, :]: one bias vector per example (the ResNet's level bias).

    The same function as the broadcast add; only the bias's gradient, the per-example sum of the
    cotangent over H and W, is computed differently: as a batched dot with a vector of ones,
    which XLA:CPU runs several times faster than the reduction autodiff writes (the width-32
    CIFAR training step: 144-146 -> 156-161 examples/s on this 2-core machine, three interleaved
    rounds; benchmarks/results/network.json). A test checks both gradients against the
    broadcast add's."""
    return x + bias[:, None, None, :]


def _add_example_bias_fwd(x, bias):
    return add_example_bias(x, bias), x.shape


def _add_example_bias_bwd(shape, g):
    n, h, w, c = shape
    ones = jnp.ones((n, h * w), g.dtype)
    per_example = (((1,), (1,)), ((0,), (0,)))  # contract H W, batch over N
    return g, jax.lax.dot_general(ones, g.reshape(n, h * w, c), per_example)


add_example_bias.defvjp(_add_example_bias_fwd, _add_example_bias_bwd)


def avg_pool2(x: Float[Array, " N H W C"]) -> Float[Array, " N H/2 W/2 C"]:
    """2x2 average pooling with stride 2 (H and W even), as a reshape and a mean."""
    n, h, w, c = x.shape
    return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


# --- Spectral normalization (Miyato et al. 2018) -----------------------------------------------


def weight_matrix(weight: Array) -> Float[Array, " O K"]:
    """The matrix whose spectral norm is normalized: a dense weight (in, out) as (out, in), a
    kernel (kh, kw, in, out) as (out, kh * kw * in) (PyTorch's / Miyato's convention)."""
    return jnp.moveaxis(weight, -1, 0).reshape(weight.shape[-1], -1)


def _unit(v: Array) -> Array:
    return v / (jnp.linalg.norm(v) + 1e-12)


def spectral_norm_estimate(weight: Array, u: Float[Array, " O"]) -> Float[Array, ""]:
    """sigma_hat = u^T W v with v = W^T u / ||W^T u||, W = weight_matrix(weight).

    u and v are held fixed (stop_gradient), so d sigma_hat / dW = u v^T as in Miyato et al.;
    sigma_hat <= sigma_max(W), with equality when u is the leading left singular vector.
    """
    matrix = weight_matrix(weight)
    u = jax.lax.stop_gradient(u)
    v = jax.lax.stop_gradient(_unit(matrix.T @ u))
    return u @ (matrix @ v)


def power_step(weight: Array, u: Float[Array, " O"]) -> Float[Array, " O"]:
    """One power iteration for the leading left singular vector: u <- W W^T u, normalized."""
    matrix = jax.lax.stop_gradient(weight_matrix(weight))
    v = _unit(matrix.T @ jax.lax.stop_gradient(u))
    return _unit(matrix @ v)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_layer(key: PRNGKeyArray, shape: tuple[int, ...], spectral_norm: bool):
    """(weight, zero bias, random unit u or None) of a layer, in one compiled call per shape
    from one uniform draw (op-by-op initialisation compiled each random op separately, ~1 s
    per op and per shape on this CPU)."""
    size, fan = shape[-1], math.prod(shape)
    receptive = math.prod(shape[:-2])
    limit = math.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
    draw = jax.random.uniform(key, (fan + size,), jnp.float32, -1.0, 1.0)
    weight = limit * draw[:fan].reshape(shape)
    u = _unit(draw[fan:]) if spectral_norm else None
    return weight, jnp.zeros((size,), jnp.float32), u


class Dense(eqx.Module):
    """y = x W + b on the last axis, W of shape (in, out); optionally W / sigma_hat(W).

    `u` is the persistent power-iteration vector (None without spectral normalization); it is
    only changed by `power_iteration`, so every forward pass between two calls uses the same W.
    """

    weight: Float[Array, " I O"]
    bias: Float[Array, " O"]
    u: Float[Array, " O"] | None

    def __init__(self, in_features: int, out_features: int, spectral_norm: bool, key: PRNGKeyArray):
        shape = (in_features, out_features)
        self.weight, self.bias, self.u = _init_layer(key, shape, spectral_norm)

    def normalized_weight(self) -> Float[Array, " I O"]:
        """W / sigma_hat(W) (W itself without spectral normalization)."""
        if self.u is None:
            return self.weight
        return self.weight / spectral_norm_estimate(self.weight, self.u)

    def __call__(self, x: Float[Array, " *B I"]) -> Float[Array, " *B O"]:
        return x @ self.normalized_weight() + self.bias

    def power_iteration(self) -> "Dense":
        """A copy with `u` advanced by one power iteration (self without spectral norm)."""
        if self.u is None:
            return self
        return eqx.tree_at(lambda m: m.u, self, power_step(self.weight, self.u))


class Conv2d(eqx.Module):
    """Channels-last 3x3-style convolution (see `conv2d`), optionally spectrally normalized
    (kernel reshaped to (out, kh * kw * in)); an optional per-output-channel scale multiplies
    the (normalized) kernel.

    `u` is the persistent power-iteration vector, as in `Dense`. `backend` says which
    convolution runs (`conv2d`'s backend): a static field, so changing it (`with_conv_backend`)
    retraces a jitted function, and checkpoints (the leaves only) do not see it.
    """

    weight: Float[Array, " kh kw I O"]
    bias: Float[Array, " O"]
    u: Float[Array, " O"] | None
    scale: Float[Array, " O"] | None
    flipped: Float[Array, " kh kw O I"] | None  # set by `precompute` only
    backend: str = eqx.field(static=True, default="xla")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        spectral_norm: bool,
        key: PRNGKeyArray,
        init_scale: float | None = None,
    ):
        """init_scale: if given, add a learned per-channel scale initialised to this value."""
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.weight, self.bias, self.u = _init_layer(key, shape, spectral_norm)
        self.scale = (
            None if init_scale is None else jnp.full((out_channels,), init_scale, jnp.float32)
        )
        self.flipped = None
        self.backend = "xla"

    def normalized_weight(self) -> Float[Array, " kh kw I O"]:
        """scale * W / sigma_hat(W), with the factors that are configured."""
        w = self.weight
        if self.u is not None:
            w = w / spectral_norm_estimate(w, self.u)
        return w if self.scale is None else w * self.scale

    def __call__(self, x: Float[Array, " N H W I"]) -> Float[Array, " N H W O"]:
        return conv2d(x, self.normalized_weight(), self.bias, self.flipped, self.backend)

    def precompute(self) -> "Conv2d":
        """The same layer with its kernel's preprocessing done once: the normalized, scaled
        kernel as `weight` (no u, no scale) and its flipped copy for the input gradient. For a
        chain, whose weights are fixed; no power iteration or training from it."""
        weight = self.normalized_weight()
        return eqx.tree_at(
            lambda m: (m.weight, m.u, m.scale, m.flipped),
            self,
            (weight, None, None, flip_kernel(weight)),
            is_leaf=lambda x: x is None,
        )

    def power_iteration(self) -> "Conv2d":
        """A copy with `u` advanced by one power iteration (self without spectral norm)."""
        if self.u is None:
            return self
        return eqx.tree_at(lambda m: m.u, self, power_step(self.weight, self.u))


def _map_layers(tree: T, types: type | tuple[type, ...], method: str) -> T:
    """`layer.method()` for every layer of `types` inside `tree`; everything else unchanged."""
    is_layer = lambda x: isinstance(x, types)  # noqa: E731
    update = lambda x: getattr(x, method)() if is_layer(x) else x  # noqa: E731
    return jax.tree.map(update, tree, is_leaf=is_layer)


def with_conv_backend(tree: T, backend: str) -> T:
    """`tree` with every Conv2d inside it set to run on `backend` ("xla" or "onednn"); the
    same arrays (a static field changes, so the tree's structure does)."""
    if backend not in CONV_BACKENDS:
        raise ValueError(f"conv backend must be one of {CONV_BACKENDS}, got {backend!r}")

    def set_backend(layer: Conv2d) -> Conv2d:
        if layer.backend == backend:
            return layer
        new = copy.copy(layer)  # a frozen dataclass: the static field is set on the copy
        object.__setattr__(new, "backend", backend)
        return new

    is_conv = lambda x: isinstance(x, Conv2d)  # noqa: E731
    return jax.tree.map(lambda x: set_backend(x) if is_conv(x) else x, tree, is_leaf=is_conv)


def precompute_convs(tree: T) -> T:
    """`Conv2d.precompute` applied to every Conv2d inside `tree`."""
    return _map_layers(tree, Conv2d, "precompute")


def power_iterate(tree: T) -> T:
    """Advance every spectrally normalized layer (Dense, Conv2d) inside `tree` by one power
    iteration; everything else is returned unchanged."""
    return _map_layers(tree, (Dense, Conv2d), "power_iteration")
