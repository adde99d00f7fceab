"""oneDNN convolutions inside XLA programs (drlx/ops/onednn_conv.cc, through JAX's FFI).

`conv2d_onednn(x, w)`: the stride-1, 'SAME'-padded, channels-last convolution of
drlx.models.layers.conv2d (NHWC x, HWIO w with odd kernel sizes, float32) computed by oneDNN's
forward primitive, reverse-mode differentiable through oneDNN's backward-data and
backward-weights primitives (custom VJP).

vmap: each of the three calls has a batching rule (`jax.custom_batching.custom_vmap`). A batch
of activations with one kernel is folded into the convolution's own batch axis N (one call);
anything else (a batched kernel, or per-example weight gradients) runs as a sequential
`lax.map` over the vmapped axis.

`load()` loads the library built by `python -m drlx.ops.build` and registers its handlers
with XLA (CPU only); it returns False if that is impossible, and `load_error()` says why.
"""

import ctypes
import functools
import sys

import jax
import jax.numpy as jnp
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
    "backward_data": ("DrlxOnednnConvBackwardData", "drlx_onednn_conv_backward_data"),
    "backward_weights": ("DrlxOnednnConvBackwardWeights", "drlx_onednn_conv_backward_weights"),
}
PASS_INDEX = {"forward": 0, "backward_data": 1, "backward_weights": 2}


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


def _ffi(pass_: str, a: Array, b: Array, out_shape: tuple[int, ...]) -> Array:
    if not load():
        raise RuntimeError(f"oneDNN convolutions unavailable: {load_error()}")
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return jax.ffi.ffi_call(HANDLERS[pass_][1], out)(a, b)


# --- Sharding: XLA's partitioner would gather a custom call's operands onto every device (each
# one then convolving the whole batch). Each pass instead runs per shard of the batch axis N
# (custom_partitioning); the weight gradient is summed over the shards (psum). Every other axis
# is replicated first. On one device the call is inlined as it is.

# factors of (operand, operand -> result), "n" the batch
_RULES = {
    "forward": "n h w i, k l i o -> n h w o",
    "backward_data": "n h w o, k l i o -> n h w i",
    "backward_weights": "n h w i, n h w o -> k l i o",
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
    def shape_of(a, b):
        if pass_ == "forward":
            return (*a.shape[:3], b.shape[3])
        if pass_ == "backward_data":
            return (*a.shape[:3], b.shape[2])
        return (*kernel, a.shape[3], b.shape[3])

    @custom_partitioning
    def op(a, b):
        return _ffi(pass_, a, b, shape_of(a, b))

    def partition(mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding, arg_shapes[0].shape[0], mesh)
        batch = NamedSharding(mesh, P(axes))
        if pass_ == "backward_weights":
            args = (batch, batch)
            out = NamedSharding(mesh, P())

            def lower(a, b):
                dw = _ffi(pass_, a, b, shape_of(a, b))
                return dw if axes is None else jax.lax.psum(dw, axes)
        else:
            args = (batch, NamedSharding(mesh, P()))
            out = batch

            def lower(a, b):
                return _ffi(pass_, a, b, shape_of(a, b))

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


def _call(pass_: str, a: Array, b: Array, kernel: tuple[int, int] | None = None) -> Array:
    return _partitioned(pass_, kernel)(a, b)


def _check(x: Array, w: Array) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_onednn needs NHWC x and HWIO w, got {x.shape} and {w.shape}")
    if w.shape[0] % 2 == 0 or w.shape[1] % 2 == 0:
        raise ValueError(f"conv2d_onednn needs an odd kernel size, got {w.shape[:2]}")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"{x.shape[3]} input channels for a kernel of {w.shape[2]}")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"conv2d_onednn is float32 only, got {x.dtype} and {w.dtype}")


def _batching_rule(op, fold: bool):
    """A custom_vmap rule for op(a, b): `fold` ops whose second operand is unbatched merge the
    vmapped axis into N; everything else maps sequentially."""

    def rule(axis_size, in_batched, a, b):
        a_batched, b_batched = in_batched
        if fold and a_batched and not b_batched:
            out = op(a.reshape(-1, *a.shape[2:]), b)
            return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
        if not a_batched:
            a = jnp.broadcast_to(a, (axis_size, *a.shape))
        if not b_batched:
            b = jnp.broadcast_to(b, (axis_size, *b.shape))
        return jax.lax.map(lambda ab: op(*ab), (a, b)), True

    return rule


@custom_vmap
def forward(x: Float[Array, " N H W I"], w: Float[Array, " kh kw I O"]) -> Array:
    """y = conv(x, w) (NHWC): oneDNN's forward convolution."""
    return _call("forward", x, w)


@custom_vmap
def backward_data(dy: Float[Array, " N H W O"], w: Float[Array, " kh kw I O"]) -> Array:
    """dx of y = conv(x, w) given dy: oneDNN's backward-data convolution."""
    return _call("backward_data", dy, w)


def backward_weights(
    x: Float[Array, " N H W I"], dy: Float[Array, " N H W O"], kernel: tuple[int, int]
) -> Float[Array, " kh kw I O"]:
    """dw of y = conv(x, w) given dy, w of spatial size `kernel`: oneDNN's backward-weights
    convolution."""
    return _backward_weights(tuple(kernel))(x, dy)


@functools.cache
def _backward_weights(kernel: tuple[int, int]):
    @custom_vmap
    def op(x, dy):
        return _call("backward_weights", x, dy, kernel)

    # per-example weight gradients: never folded (that would sum them)
    op.def_vmap(_batching_rule(op, fold=False))
    return op


forward.def_vmap(_batching_rule(forward, fold=True))
backward_data.def_vmap(_batching_rule(backward_data, fold=True))


@jax.custom_vjp
def conv2d_onednn(
    x: Float[Array, " N H W I"], w: Float[Array, " kh kw I O"]
) -> Float[Array, " N H W O"]:
    """Stride-1, 'SAME'-padded cross-correlation of NHWC x with the HWIO kernel w (odd sizes),
    by oneDNN; reverse-mode differentiable, batched under vmap (see the module's doc)."""
    _check(x, w)
    return forward(x, w)


def _fwd(x, w):
    _check(x, w)
    return forward(x, w), (x, w)


def _bwd(res, ct):
    x, w = res
    return backward_data(ct, w), backward_weights(x, ct, w.shape[:2])


conv2d_onednn.defvjp(_fwd, _bwd)


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
