"""oneDNN convolutions inside XLA programs (drlx/ops/onednn_conv.cc, through JAX's FFI).

`conv2d_onednn(x, w, b=None)`: the stride-1, 'SAME'-padded, channels-last convolution of
drlx.models.layers.conv2d (NHWC x, HWIO w with odd kernel sizes, optional bias b, float32)
computed by oneDNN's forward primitive, reverse-mode differentiable through oneDNN's
backward-data and backward-weights primitives (custom VJP; the backward-weights pass also gives
the bias gradient).

vmap: each of the four calls (forward, forward with bias, backward-data, backward-weights) has a
batching rule (`jax.custom_batching.custom_vmap`). A batch of activations with one kernel is
folded into the convolution's own batch axis N (one call); anything else (a batched kernel, or
per-example weight gradients) runs as a sequential `lax.map` over the vmapped axis.

`load()` loads the library built by `python -m drlx.ops.build` and registers its handlers
with XLA (CPU only); it returns False if that is impossible, and `load_error()` says why.
"""

import ctypes
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from drlx.ops import build

LIBRARY = build.LIBRARY
# pass name -> (symbol in the library, XLA custom-call target name)
HANDLERS = {
    "forward": ("DrlxOnednnConvForward", "drlx_onednn_conv_forward"),
    "forward_bias": ("DrlxOnednnConvForwardBias", "drlx_onednn_conv_forward_bias"),
    "backward_data": ("DrlxOnednnConvBackwardData", "drlx_onednn_conv_backward_data"),
    "backward_weights": ("DrlxOnednnConvBackwardWeights", "drlx_onednn_conv_backward_weights"),
}
PASS_INDEX = {"forward": 0, "backward_data": 1, "backward_weights": 2, "forward_bias": 3}


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if not LIBRARY.exists():
        why = "not built"
        if build.ERROR_FILE.exists():
            why = f"its build failed: {build.ERROR_FILE.read_text().strip()}"
        return None, f"{LIBRARY} missing ({why}; run `python -m drlx.ops.build`)"
    if not build.up_to_date():
        return None, f"{LIBRARY} is older than {build.SOURCE.name}: run `python -m drlx.ops.build`"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
        for symbol, target in HANDLERS.values():
            capsule = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except Exception as err:  # noqa: BLE001 - reported to the caller, who falls back
        return None, f"loading {LIBRARY.name} failed: {type(err).__name__}: {err}"
    lib.DrlxOnednnConvImpl.restype = ctypes.c_char_p
    lib.DrlxOnednnConvImpl.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 7
    return lib, None


def load() -> bool:
    """Load the library and register its three FFI targets for the CPU (once per process).
    False if the library is missing, stale or cannot be loaded: `load_error()` says why."""
    return _load()[0] is not None


def load_error() -> str | None:
    """Why `load()` failed (None if it succeeded)."""
    return _load()[1]


def implementation(pass_: str, shape: tuple[int, ...]) -> str:
    """The oneDNN implementation chosen for a pass and a shape (n, h, w, i, o, kh, kw), with
    '|reorder' when the kernel is reordered to a blocked layout ('|plain': used as is)."""
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"oneDNN convolutions unavailable: {why}")
    return lib.DrlxOnednnConvImpl(PASS_INDEX[pass_], *shape).decode()


def _ffi(
    pass_: str, *operands: Array, out_shape: tuple[int, ...], kernel: tuple[int, int] | None = None
) -> Array:
    """One pass's custom call. backward_weights: out_shape is `packed_shape`, and `kernel` the
    spatial size of dw."""
    if not load():
        raise RuntimeError(f"oneDNN convolutions unavailable: {load_error()}")
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    if pass_ != "backward_weights":
        return jax.ffi.ffi_call(HANDLERS[pass_][1], out)(*operands)
    kh, kw = (np.int64(k) for k in kernel)
    return jax.ffi.ffi_call(HANDLERS[pass_][1], out)(*operands, kh=kh, kw=kw)


# The backward-weights pass returns dw and db in one array: dw's rows (hwio, flattened to
# (kh kw I, O)) then db as the last row. (A custom call with two results lost its batch
# sharding: the partitioner gathered the activations for it.)
def packed_shape(kernel: tuple[int, int], i: int, o: int) -> tuple[int, int]:
    return (kernel[0] * kernel[1] * i + 1, o)


def unpack(packed: Array, kernel: tuple[int, int]) -> tuple[Array, Array]:
    """(dw, db) from a packed backward-weights result (any leading batch axes)."""
    *batch, rows, o = packed.shape
    dw = packed[..., :-1, :].reshape(*batch, *kernel, (rows - 1) // (kernel[0] * kernel[1]), o)
    return dw, packed[..., -1, :]


# --- Sharding: XLA's partitioner would gather a custom call's operands onto every device (each
# one then convolving the whole batch). Each pass instead runs per shard of the batch axis N
# (custom_partitioning); the weight gradient is summed over the shards (psum). Every other axis
# is replicated first. On one device the call is inlined as it is.

# factors of (operands -> result), "n" the batch
_RULES = {
    "forward": "n h w i, k l i o -> n h w o",
    "forward_bias": "n h w i, k l i o, o -> n h w o",
    "backward_data": "n h w o, k l i o -> n h w i",
    "backward_weights": "n h w i, n h w o -> r o",  # r: dw's rows and db's (see _ffi)
}


def _batch_axes(sharding, n: int, mesh) -> str | tuple[str, ...] | None:
    """The mesh axes that shard an operand's batch axis (None: replicated, or they do not
    divide it)."""
    spec = getattr(sharding, "spec", None)
    axes = spec[0] if spec else None
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return axes if n % size == 0 else None


@functools.cache
def _partitioned(pass_: str, kernel: tuple[int, int] | None):
    def shape_of(a, b, *_):
        if pass_ in ("forward", "forward_bias"):
            return (*a.shape[:3], b.shape[3])
        if pass_ == "backward_data":
            return (*a.shape[:3], b.shape[2])
        return packed_shape(kernel, a.shape[3], b.shape[3])

    def call(*operands):
        return _ffi(pass_, *operands, out_shape=shape_of(*operands), kernel=kernel)

    op = custom_partitioning(call)

    def partition(mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding, arg_shapes[0].shape[0], mesh)
        batch, replicated = NamedSharding(mesh, P(axes)), NamedSharding(mesh, P())
        if pass_ == "backward_weights":  # both operands are activations; dw, db summed
            args, out = (batch, batch), replicated

            def lower(*operands):
                grads = call(*operands)
                return grads if axes is None else jax.lax.psum(grads, axes)
        else:  # an activation, then the kernel (and bias), replicated
            args, out = (batch, *[replicated] * (len(arg_shapes) - 1)), batch
            lower = call

        return mesh, lower, out, args

    def infer(mesh, arg_shapes, result_shape):
        if pass_ == "backward_weights":
            return NamedSharding(mesh, P())
        return NamedSharding(
            mesh, P(_batch_axes(arg_shapes[0].sharding, arg_shapes[0].shape[0], mesh))
        )

    # every factor but n, in the order of first appearance (Shardy wants them sorted)
    factors = _RULES[pass_].replace(",", " ").replace("->", " ").split()
    others = tuple(f for f in dict.fromkeys(factors) if f != "n")
    op.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=_RULES[pass_],
        reduction_factors=("n",) if pass_ == "backward_weights" else (),
        need_replication_factors=others,
    )
    return op


def _call(pass_: str, *operands: Array, kernel: tuple[int, int] | None = None) -> Array:
    return _partitioned(pass_, kernel)(*operands)


def _check(x: Array, w: Array, b: Array | None) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_onednn needs NHWC x and HWIO w, got {x.shape} and {w.shape}")
    if w.shape[0] % 2 == 0 or w.shape[1] % 2 == 0:
        raise ValueError(f"conv2d_onednn needs an odd kernel size, got {w.shape[:2]}")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"{x.shape[3]} input channels for a kernel of {w.shape[2]}")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"conv2d_onednn is float32 only, got {x.dtype} and {w.dtype}")
    if b is not None and (b.shape != (w.shape[3],) or b.dtype != jnp.float32):
        raise ValueError(
            f"conv2d_onednn needs a float32 bias of shape ({w.shape[3]},), got {b.dtype}{b.shape}"
        )


def _batching_rule(op, fold: bool):
    """A custom_vmap rule for op(a, *rest): `fold` ops whose other operands are unbatched merge
    the vmapped axis into a's N; everything else maps sequentially."""

    def rule(axis_size, in_batched, a, *rest):
        if fold and in_batched[0] and not any(in_batched[1:]):
            out = op(a.reshape(-1, *a.shape[2:]), *rest)
            return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
        operands = [
            v if batched else jnp.broadcast_to(v, (axis_size, *v.shape))
            for v, batched in zip((a, *rest), in_batched, strict=True)
        ]
        return jax.lax.map(lambda vs: op(*vs), operands), True

    return rule


@custom_vmap
def forward(x: Float[Array, " N H W I"], w: Float[Array, " kh kw I O"]) -> Array:
    """y = conv(x, w) (NHWC): oneDNN's forward convolution."""
    return _call("forward", x, w)


@custom_vmap
def forward_bias(
    x: Float[Array, " N H W I"], w: Float[Array, " kh kw I O"], b: Float[Array, " O"]
) -> Array:
    """y = conv(x, w) + b (NHWC): oneDNN's forward convolution with its bias. (XLA adding b
    after the call made the partitioner gather the activations over the devices.)"""
    return _call("forward_bias", x, w, b)


@custom_vmap
def backward_data(dy: Float[Array, " N H W O"], w: Float[Array, " kh kw I O"]) -> Array:
    """dx of y = conv(x, w) given dy: oneDNN's backward-data convolution."""
    return _call("backward_data", dy, w)


def backward_weights(
    x: Float[Array, " N H W I"], dy: Float[Array, " N H W O"], kernel: tuple[int, int]
) -> Float[Array, " kh kw I O"]:
    """dw of y = conv(x, w) given dy, w of spatial size `kernel`: oneDNN's backward-weights
    convolution."""
    return backward_weights_and_bias(x, dy, kernel)[0]


def backward_weights_and_bias(
    x: Float[Array, " N H W I"], dy: Float[Array, " N H W O"], kernel: tuple[int, int]
) -> tuple[Float[Array, " kh kw I O"], Float[Array, " O"]]:
    """(dw, db) of y = conv(x, w) + b given dy: one oneDNN backward-weights pass."""
    kernel = tuple(kernel)
    return unpack(_backward_weights(kernel)(x, dy), kernel)


@functools.cache
def _backward_weights(kernel: tuple[int, int]):
    @custom_vmap
    def op(x, dy):
        return _call("backward_weights", x, dy, kernel=kernel)

    # per-example weight gradients: never folded (that would sum them)
    op.def_vmap(_batching_rule(op, fold=False))
    return op


forward.def_vmap(_batching_rule(forward, fold=True))
forward_bias.def_vmap(_batching_rule(forward_bias, fold=True))
backward_data.def_vmap(_batching_rule(backward_data, fold=True))


def conv2d_onednn(
    x: Float[Array, " N H W I"], w: Float[Array, " kh kw I O"], b: Float[Array, " O"] | None = None
) -> Float[Array, " N H W O"]:
    """Stride-1, 'SAME'-padded cross-correlation of NHWC x with the HWIO kernel w (odd sizes),
    plus the bias b if given, by oneDNN; reverse-mode differentiable, batched under vmap (see
    the module's doc)."""
    _check(x, w, b)
    return _conv(x, w) if b is None else _conv_bias(x, w, b)


@jax.custom_vjp
def _conv(x, w):
    return forward(x, w)


def _conv_fwd(x, w):
    return forward(x, w), (x, w)


def _conv_bwd(res, ct):
    x, w = res
    return backward_data(ct, w), backward_weights(x, ct, w.shape[:2])


_conv.defvjp(_conv_fwd, _conv_bwd)


@jax.custom_vjp
def _conv_bias(x, w, b):
    return forward_bias(x, w, b)


def _conv_bias_fwd(x, w, b):
    return _conv_bias(x, w, b), (x, w)


def _conv_bias_bwd(res, ct):
    x, w = res
    return (backward_data(ct, w), *backward_weights_and_bias(x, ct, w.shape[:2]))


_conv_bias.defvjp(_conv_bias_fwd, _conv_bias_bwd)


# --- Which backend runs the convolutions (runtime.conv_backend) --------------------------------

BACKEND_CHOICES = ("xla", "onednn", "auto")
_resolved: dict[str, str] = {}  # requested -> resolved, in this process


def resolve_backend(requested: str) -> str:
    """The convolution backend ("xla" or "onednn") for a requested runtime.conv_backend.

    auto: oneDNN when JAX's default backend is the CPU and `load()` succeeds, else XLA.
    onednn: oneDNN on the CPU (a RuntimeError naming the reason if it cannot be loaded); XLA on
    an accelerator, whose own convolutions are used whatever was asked. xla: XLA's.
    Says once per process on stderr which backend runs and why. Starts JAX's backend: call it
    when the first network is made (after any `jax.distributed.initialize()`).
    """
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"conv_backend must be one of {BACKEND_CHOICES}, got {requested!r}")
    if requested in _resolved:
        return _resolved[requested]
    platform = jax.default_backend()
    if platform != "cpu":
        resolved, why = "xla", f"JAX runs on {platform}"
    elif requested == "xla":
        resolved, why = "xla", "requested"
    elif load():
        resolved, why = "onednn", "requested" if requested == "onednn" else "CPU, library loaded"
    elif requested == "onednn":
        raise RuntimeError(
            f"runtime.conv_backend is 'onednn' but the oneDNN convolutions cannot be used: "
            f"{load_error()}"
        )
    else:
        resolved, why = "xla", f"oneDNN unavailable: {load_error()}"
    _resolved[requested] = resolved  # said once per requested value, so at most three times
    print(f"drlx: convolutions on {resolved} (conv_backend={requested}: {why})", file=sys.stderr)
    return resolved


def backends_used() -> dict[str, str]:
    """requested -> resolved conv_backend of every resolution in this process (for the ledger)."""
    return dict(_resolved)
