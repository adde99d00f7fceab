"""oneDNN convolutions (drlx/ops): every pass against XLA's convolution and an independent
float64 numpy correlation, at every convolution shape the repository's networks use; under
grad, vmap, a jitted lax.scan and 4 simulated devices; miswired passes are caught; the
runtime.conv_backend switch.

The library is built by the README's set-up (`make` runs `python -m drlx.ops.build`): if it is
missing these tests fail with the build's reason, they are not skipped.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drlx.builder import build_schedule, initializer_factory, network_factory
from drlx.models import layers
from drlx.models.resnet import ResNetEnergy
from drlx.ops import conv
from drlx.spec.experiment import ExperimentSpec
from drlx.spec.load import load_spec
from drlx.spec.model import ResNetEnergy as ResNetSpec

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # max abs error / max abs reference


@pytest.fixture(scope="module", autouse=True)
def library():
    assert conv.load(), f"oneDNN convolutions not available: {conv.load_error()}"


# --- the shapes the networks use ------------------------------------------------------------------


def _data_shape(data) -> tuple[int, int, int] | None:
    match data.kind:
        case "digits":
            return (8, 8, 1)
        case "cifar10" | "imagenet32":
            return (32, 32, 3)
        case "image_folder":
            return (data.size, data.size, 3)
        case "npz":
            return tuple(data.shape)
    return None  # toy 2D data: no images, no convolutions


def network_conv_shapes() -> set[tuple[int, int, int, int, int]]:
    """(k, I, O, H, W) of every convolution that the networks of the repository's specs (energy
    networks and CDRL initializers) and of benchmarks/bench_network.py run, read off their
    forward passes (abstractly: jax.eval_shape) through a recording layers.conv2d."""
    seen = set()
    original = layers.conv2d

    def recording(x, weight, *args, **kwargs):
        kh, kw, i, o = weight.shape
        seen.add((kh, i, o, x.shape[1], x.shape[2]))
        return original(x, weight, *args, **kwargs)

    def record(make, shape, call):
        def run():
            return call(make(key=jax.random.key(0)), jnp.zeros((2, *shape)), jnp.zeros(2, int))

        jax.eval_shape(run)

    layers.conv2d = recording
    try:
        for path in sorted((REPO / "specs").glob("*.yaml")):
            spec = load_spec(path)
            shape = _data_shape(spec.data)
            if shape is None:
                continue
            schedule = build_schedule(spec.diffusion)
            if isinstance(spec.model, ResNetSpec):
                make = network_factory(spec.model, shape, schedule)
                record(make, shape, lambda net, y, t: net(y, t))
            if spec.initializer is not None and spec.initializer.kind == "unet":
                make = initializer_factory(spec.initializer, shape, schedule)
                record(make, shape, lambda net, y, t: net.mean(y, t))
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_network import CONFIGS

        for cfg in CONFIGS.values():
            c = cfg["shape"][2]

            def make(key, c=c, cfg=cfg):
                return ResNetEnergy(c, cfg["width"], cfg["blocks"], cfg["mults"], 32, True, key)

            record(make, cfg["shape"], lambda net, y, t: net(y, t))
    finally:
        layers.conv2d = original
    return seen


SHAPES = sorted(network_conv_shapes()) + [(1, 16, 24, 8, 8), (5, 8, 12, 9, 7)]


def test_the_networks_convolutions_were_found():
    # 3x3 throughout; the CIFAR ResNet's widths and the U-Net's skip concatenations among them
    assert {k for k, *_ in SHAPES[:-2]} == {3}
    assert (3, 3, 128, 32, 32) in SHAPES and (3, 256, 256, 4, 4) in SHAPES
    assert (3, 1, 32, 8, 8) in SHAPES and len(SHAPES) > 15


# --- float64 references, written from the definition ----------------------------------------------


def _pad(a, k):
    p = (k - 1) // 2
    return np.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))


def ref_forward(x, w):
    """y[n,h,w,o] = sum_{a,b,i} x[n, h+a-p, w+b-p, i] w[a,b,i,o] (zero outside)."""
    k, _, _, o = w.shape
    n, h, wd, _ = x.shape
    xp = _pad(x.astype(np.float64), k)
    y = np.zeros((n, h, wd, o))
    for a in range(k):
        for b in range(w.shape[1]):
            y += xp[:, a : a + h, b : b + wd] @ w[a, b].astype(np.float64)
    return y


def ref_backward_data(dy, w):
    """dx = d<y, dy>/dx: every output's dy sent back to the inputs it read."""
    k, kw, i, _ = w.shape
    n, h, wd, _ = dy.shape
    p = (k - 1) // 2
    dxp = np.zeros((n, h + 2 * p, wd + 2 * p, i))
    for a in range(k):
        for b in range(kw):
            dxp[:, a : a + h, b : b + wd] += dy.astype(np.float64) @ w[a, b].T.astype(np.float64)
    return dxp[:, p : p + h, p : p + wd]


def ref_backward_weights(x, dy, k):
    """dw[a,b,i,o] = sum_{n,h,w} x[n, h+a-p, w+b-p, i] dy[n,h,w,o]."""
    n, h, wd, i = x.shape
    xp = _pad(x.astype(np.float64), k)
    dw = np.zeros((k, k, i, dy.shape[3]))
    for a in range(k):
        for b in range(k):
            patch = xp[:, a : a + h, b : b + wd].reshape(-1, i)
            dw[a, b] = patch.T @ dy.reshape(-1, dy.shape[3]).astype(np.float64)
    return dw


def rel_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _data(shape, n=1, seed=0):
    k, i, o, h, w = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, i)).astype(np.float32)
    wt = (rng.standard_normal((k, k, i, o)) / np.sqrt(k * k * i)).astype(np.float32)
    dy = rng.standard_normal((n, h, w, o)).astype(np.float32)
    return x, wt, dy


def xla_passes(x, w, dy):
    y, vjp = jax.vjp(layers._conv, x, w)
    return (y, *vjp(dy))


def check_passes(shape, forward, backward_data, backward_weights, n=1):
    """The three passes against numpy's float64 and XLA's float32 convolutions; raises
    AssertionError naming the first pass that is off."""
    x, w, dy = _data(shape, n)
    got = {
        "forward": forward(x, w),
        "backward_data": backward_data(dy, w),
        "backward_weights": backward_weights(x, dy, w.shape[:2]),
    }
    refs = {
        "forward": ref_forward(x, w),
        "backward_data": ref_backward_data(dy, w),
        "backward_weights": ref_backward_weights(x, dy, w.shape[0]),
    }
    xla = dict(zip(refs, xla_passes(x, w, dy), strict=True))
    for name, value in got.items():
        assert value.shape == refs[name].shape, (name, value.shape)
        assert rel_error(value, refs[name]) < TOL, (name, shape, rel_error(value, refs[name]))
        assert rel_error(value, xla[name]) < TOL, (name, shape, rel_error(value, xla[name]))


ONEDNN = (conv.forward, conv.backward_data, conv.backward_weights)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "k{}_{}to{}_{}x{}".format(*s))
def test_passes_match_numpy_and_xla(shape):
    check_passes(shape, *ONEDNN, n=2 if shape[3] * shape[4] <= 256 else 1)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "k{}_{}to{}_{}x{}".format(*s))
def test_bias_passes(shape):
    """The forward pass with a bias, and the backward-weights pass's second result,
    db = sum_{n,h,w} dy, against float64 numpy (dw beside it, so the two are not swapped)."""
    x, w, dy = _data(shape, n=2)
    b = np.random.default_rng(7).standard_normal(shape[2]).astype(np.float32)
    assert rel_error(conv.forward_bias(x, w, b), ref_forward(x, w) + b) < TOL
    dw, db = conv.backward_weights_and_bias(x, dy, w.shape[:2])
    assert db.shape == (shape[2],)
    assert rel_error(db, dy.astype(np.float64).sum(axis=(0, 1, 2))) < TOL
    assert rel_error(dw, ref_backward_weights(x, dy, shape[0])) < TOL


def test_conv_with_bias_differentiates_like_xla():
    x, w1, w2 = _net_data()
    rng = np.random.default_rng(5)
    b1 = jnp.asarray(rng.standard_normal(w1.shape[3]), jnp.float32)
    b2 = jnp.asarray(rng.standard_normal(w2.shape[3]), jnp.float32)

    def loss(backend):
        def f(x, w1, b1, w2, b2):
            h = jax.nn.leaky_relu(layers.conv2d(x, w1, b1, backend=backend), 0.2)
            return jnp.sum(jnp.sin(layers.conv2d(h, w2, b2, backend=backend)))

        return jax.jit(jax.value_and_grad(f, (0, 1, 2, 3, 4)))

    got, want = loss("onednn")(x, w1, b1, w2, b2), loss("xla")(x, w1, b1, w2, b2)
    _close(got, want)
    # the bias gradients come out of the weight-gradient calls: no reduction of dy by XLA
    hlo = loss("onednn").lower(x, w1, b1, w2, b2).compile().as_text()
    assert hlo.count("drlx_onednn_conv_backward_weights") == 2


# --- mutations: a miswired pass must be caught ----------------------------------------------------


def _raw(pass_):
    """The pass's FFI target called directly (no partitioning or batching rule)."""

    def call(a, b, kernel=None):
        shape = {
            "forward": lambda: (*a.shape[:3], b.shape[3]),
            "backward_data": lambda: (*a.shape[:3], b.shape[2]),
            "backward_weights": lambda: conv.packed_shape(kernel, a.shape[3], b.shape[3]),
        }[pass_]()
        out = conv._ffi(pass_, jnp.asarray(a), jnp.asarray(b), out_shape=shape, kernel=kernel)
        return conv.unpack(out, kernel)[0] if pass_ == "backward_weights" else out

    return call


MUTANTS = {
    # the input gradient computed as a forward pass (kernel neither flipped nor transposed)
    "backward_data_as_forward": (
        _raw("forward"),
        lambda dy, w: _raw("forward")(dy, jnp.swapaxes(w, 2, 3)),
        _raw("backward_weights"),
    ),
    # the kernel handed over with its spatial axes swapped (a layout mix-up, same shape)
    "kernel_transposed": (
        lambda x, w: _raw("forward")(x, jnp.swapaxes(w, 0, 1)),
        _raw("backward_data"),
        _raw("backward_weights"),
    ),
    # the weight gradient's handler with its operands swapped (dy as x and x as dy)
    "weights_operands_swapped": (
        _raw("forward"),
        _raw("backward_data"),
        lambda x, dy, k: jnp.swapaxes(_raw("backward_weights")(dy, x, k), 2, 3),
    ),
}


def test_the_check_passes_the_correct_wiring():
    check_passes((3, 8, 8, 6, 6), _raw("forward"), _raw("backward_data"), _raw("backward_weights"))


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_miswired_pass_is_caught(mutant):
    with pytest.raises(AssertionError):
        check_passes((3, 8, 8, 6, 6), *MUTANTS[mutant])


# --- transformations ------------------------------------------------------------------------------


def _energy(backend):
    def energy(x, w1, w2):
        h = jax.nn.leaky_relu(layers.conv2d(x, w1, backend=backend), 0.2)
        return jnp.sum(layers.conv2d(h, w2, backend=backend) ** 2) / x.shape[0]

    return energy


def _net_data(n=4, c=3, width=16, seed=1):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, 8, 8, c)), jnp.float32)
    w1 = jnp.asarray(rng.standard_normal((3, 3, c, width)) / np.sqrt(9 * c), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((3, 3, width, width)) / np.sqrt(9 * width), jnp.float32)
    return x, w1, w2


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert rel_error(u, v) < TOL, rel_error(u, v)


def test_grad_of_a_scalar_loss():
    args = _net_data()
    grads = {b: jax.jit(jax.grad(_energy(b), (0, 1, 2)))(*args) for b in ("xla", "onednn")}
    _close(grads["onednn"], grads["xla"])


def test_vmap_over_x_folds_into_the_batch():
    x, w1, _ = _net_data()
    xs = jnp.stack([x, 2 * x, -x])
    f = jax.vmap(conv.conv2d_onednn, in_axes=(0, None))
    _close(f(xs, w1), jnp.stack([layers._conv(v, w1) for v in xs]))
    hlo = jax.jit(f).lower(xs, w1).compile().as_text()
    assert hlo.count("custom_call_target=") == 1 and "while" not in hlo  # one call, N = 12
    # and its input gradient (the backward-data pass) too
    g = jax.vmap(jax.grad(lambda v, w: jnp.sum(conv.conv2d_onednn(v, w) ** 2)), (0, None))
    want = jax.vmap(jax.grad(lambda v, w: jnp.sum(layers._conv(v, w) ** 2)), (0, None))
    _close(g(xs, w1), want(xs, w1))
    hlo = jax.jit(g).lower(xs, w1).compile().as_text()
    assert "while" not in hlo and "backward_weights" not in hlo  # folded; dw dead and removed


def test_vmap_over_x_and_w():
    x, w1, _ = _net_data()
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w1, -0.5 * w1])
    got = jax.vmap(conv.conv2d_onednn)(xs, ws)
    _close(got, jnp.stack([layers._conv(a, b) for a, b in zip(xs, ws, strict=True)]))
    # per-example gradients in both: the weight gradient is never folded (that would sum it)
    loss = lambda f: lambda v, w: jnp.sum(jnp.sin(f(v, w)))  # noqa: E731
    got = jax.vmap(jax.grad(loss(conv.conv2d_onednn), (0, 1)))(xs, ws)
    want = jax.vmap(jax.grad(loss(layers._conv), (0, 1)))(xs, ws)
    _close(got, want)


def test_langevin_steps_in_a_jitted_scan():
    x, w1, w2 = _net_data(n=8)

    def chain(backend):
        grad = jax.grad(_energy(backend))

        @jax.jit
        def run(x, w1, w2):
            def step(x, _):
                return x - 0.05 * grad(x, w1, w2), None

            return jax.lax.scan(step, x, None, length=4)[0]

        return run(x, w1, w2)

    out = chain("onednn")
    assert float(jnp.max(jnp.abs(out - x))) > 1e-3  # the chain moved
    _close(out, chain("xla"))


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from drlx.models import layers
    from drlx.ops import conv
    assert conv.load(), conv.load_error()
    assert len(jax.devices()) == 4
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 8, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 16)) / 12, jnp.float32)
    b = jnp.asarray(rng.standard_normal(16), jnp.float32)

    def loss(x, w, b):
        h = jax.nn.leaky_relu(layers.conv2d(x, w, b, backend="onednn"), 0.2)
        return jnp.sum(layers.conv2d(h, w, backend="onednn") ** 2)

    f = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    mesh = jax.make_mesh((4,), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    bs = jax.device_put(b, NamedSharding(mesh, P()))
    one = f(x, w, b)
    many = f(xs, ws, bs)
    hlo = f.lower(xs, ws, bs).compile().as_text()
    err = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    json.dump({
        "errors": [err(a, b) for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one))],
        "dx_sharding": str(many[1][0].sharding.spec),
        "all_gather": "all-gather" in hlo,
        "call_batches": sorted({l.split("custom-call(")[0].split("f32[")[1].split(",")[0]
                                for l in hlo.splitlines() if "drlx_onednn_conv_forward" in l}),
    }, sys.stdout)
    """
)


def test_sharded_over_four_devices_equals_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert max(result["errors"]) < TOL, result
    assert result["dx_sharding"] in ("P('data',)", "PartitionSpec('data',)"), result
    # each device convolves its own 2 examples: nothing gathered
    assert not result["all_gather"] and result["call_batches"] == ["2"], result


# --- errors ---------------------------------------------------------------------------------------


def test_bad_operands_are_errors_not_crashes():
    x, w1, _ = _net_data()
    with pytest.raises(ValueError, match="odd kernel"):
        conv.conv2d_onednn(x, jnp.zeros((2, 2, 3, 4)))
    with pytest.raises(TypeError, match="float32"):
        conv.conv2d_onednn(x.astype(jnp.bfloat16), w1.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match=r"bias of shape \(16,\)"):
        conv.conv2d_onednn(x, w1, jnp.zeros((15,)))
    with pytest.raises(ValueError, match="float32 bias"):
        conv.conv2d_onednn(x, w1, jnp.zeros((16,), jnp.int32))
    # past the Python checks, the handler's own shape check answers with an XLA error
    with pytest.raises(Exception, match="inconsistent shapes"):
        y = conv._ffi("forward", x, jnp.zeros((3, 3, 5, 16)), out_shape=(4, 8, 8, 16))
        y.block_until_ready()
    with pytest.raises(Exception, match="kernel size must be odd"):
        y = conv._ffi("forward", x, jnp.zeros((2, 2, 3, 4)), out_shape=(4, 8, 8, 4))
        y.block_until_ready()


# --- the runtime switch ---------------------------------------------------------------------------


def test_resolution():
    assert conv.resolve_backend("xla") == "xla"
    assert conv.resolve_backend("onednn") == "onednn"
    assert conv.resolve_backend("auto") == "onednn"  # CPU and the library loaded
    with pytest.raises(ValueError, match="conv_backend must be one of"):
        conv.resolve_backend("onednnn")


def test_with_conv_backend_sets_every_layer_and_keeps_the_arrays():
    net = ResNetEnergy(1, 8, 1, (1, 2), 16, True, jax.random.key(0))
    other = layers.with_conv_backend(net, "onednn")
    is_conv = lambda m: isinstance(m, layers.Conv2d)  # noqa: E731
    convs = [m for m in jax.tree.leaves(other, is_leaf=is_conv) if is_conv(m)]
    assert len(convs) == 6 and {m.backend for m in convs} == {"onednn"}
    assert jax.tree.structure(other) != jax.tree.structure(net)  # jit retraces
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(other), strict=True):
        assert a is b
    y = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
    t = jnp.arange(3)
    _close(other(y, t), net(y, t))
    with pytest.raises(ValueError, match="conv backend must be one of"):
        layers.with_conv_backend(net, "eigen")


def _spec_with(conv_backend=None):
    raw = load_spec(REPO / "specs" / "cifar10_t6.yaml").model_dump(mode="json")
    if conv_backend is not None:
        raw["runtime"]["conv_backend"] = conv_backend
    return ExperimentSpec.model_validate(raw)


def test_spec_accepts_the_three_backends_and_keeps_the_hashes():
    default = _spec_with()
    assert default.runtime.conv_backend == "auto"
    for backend in ("xla", "onednn", "auto"):
        spec = _spec_with(backend)
        assert spec.runtime.conv_backend == backend
        assert spec.scientific_hash() == default.scientific_hash()
        assert spec.training_hash() == default.training_hash()


def test_spec_rejects_a_typo(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "examples").mkdir()
    base = REPO / "specs" / "bases" / "toy2d.yaml"
    (tmp_path / "bases" / "toy2d.yaml").write_text(base.read_text())
    text = (REPO / "specs" / "examples" / "two_moons.yaml").read_text()
    path = tmp_path / "examples" / "typo.yaml"
    path.write_text(text + "runtime:\n  conv_backend: onedn\n")
    with pytest.raises(Exception, match="runtime.conv_backend") as err:
        load_spec(path)
    message = str(err.value)
    assert "'xla', 'onednn' or 'auto'" in message, message
    assert f"{path}:{len(text.splitlines()) + 2}" in message, message  # located at its line


def _audit_environment_warnings(now: dict, conv_backend) -> list[str]:
    """The warnings drlx audit's environment check gives, in an environment `now`, for a
    record made in the same environment but with `conv_backend`."""
    from drlx.audit import Auditor, Node

    auditor = object.__new__(Auditor)  # only its environment check, no pipeline needed
    auditor.root, auditor._env_now = REPO, now
    environment = {k: v for k, v in now.items() if k != "conv_backend"}
    if conv_backend is not None:
        environment["conv_backend"] = conv_backend
    warnings: list[str] = []
    auditor._environment(Node("train"), {"stage": "train", "environment": environment}, set(),
                         warnings)  # fmt: skip
    return warnings


def test_ledger_records_the_backend_and_audit_warns_when_it_differs():
    from drlx.ledger import environment

    assert conv.resolve_backend("auto") == "onednn"
    now = environment(REPO)
    recorded = now["conv_backend"]
    assert recorded["resolved"] == "onednn" and recorded["requested"] in conv.BACKEND_CHOICES
    assert _audit_environment_warnings(now, recorded) == []
    # a run whose convolutions ran on XLA under auto would run on oneDNN here: a warning only
    other = {"requested": "auto", "resolved": "xla"}
    (warning,) = _audit_environment_warnings(now, other)
    assert "convolutions ran on xla" in warning and "run on onednn" in warning
    # records from before runtime.conv_backend have no such field: nothing to say
    assert _audit_environment_warnings(now, None) == []


def test_kernels_updated_in_place_are_not_served_stale():
    """oneDNN's reordered kernels are cached by buffer address and content: a training loop
    whose new weights reuse the old ones' buffers (donated) must still convolve with the new."""
    x, w, _ = _net_data(n=2)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(x, w):
        y = conv.conv2d_onednn(x, w)
        return y, w * 0.5 + 0.01 * jnp.sum(y) / y.size

    for _ in range(4):
        want = layers._conv(x, w)
        got, w = step(x, w)
        _close(got, want)
