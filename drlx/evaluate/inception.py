"""The Inception-v3 network of the TF FID graph (inception-2015-12-05), in Equinox, channels-last.

Matches pytorch-fid's `fid_inception_v3` (mseitzer/pytorch-fid, src/pytorch_fid/inception.py),
whose weights `pt_inception-2015-12-05-6726825d.pth` are the TF graph's, ported: torchvision's
Inception3 layout with 1008 classes, no auxiliary head, BatchNorm eps 1e-3, and the FID patches
(Mixed_5b-5d, 6b-6e, 7b: 3x3 average pool of the pool branch with count_include_pad=False, as
TF's pooling; Mixed_7c: a 3x3 *max* pool there, a quirk of the TF graph). Inference only: each
conv + BatchNorm pair is folded into one HWIO kernel and a bias when the weights are loaded.

Input handling is pytorch-fid's: bilinear resize to 299 x 299 as torch's
`F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing), values in [-1, 1].
Outputs: pool3 (the 2048 features of the final average pool, FID's features) and the 1008
logits of `fc` (bias included: the TF graph's `logits` tensor that tfgan's Inception Score
uses; class 0 is 'background' and 1001-1007 are unused, but the softmax runs over all 1008, as
in the TF graph). OpenAI's original IS code multiplies pool3 by the fc weight without the bias
(torch-fidelity's "logits_unbiased"); pass `pool3 @ fc.weight` yourself to get that variant.

Weights come from a safetensors file with the exact tensor names and shapes of the standard
.pth state dict (566 tensors: 94 conv + BatchNorm blocks x 6, including BatchNorm's
`num_batches_tracked`, plus fc.weight and fc.bias); `convert_inception_weights` writes one from
the .pth. The table of names and shapes (`inception_layout`) is read off the module structure.
"""

import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
ENV_WEIGHTS = "DRLX_INCEPTION_WEIGHTS"
STANDARD_PTH = "pt_inception-2015-12-05-6726825d.pth"
_DIMS = ("NHWC", "HWIO", "NHWC")


# --- Layers ----------------------------------------------------------------------------------


class BasicConv(eqx.Module):
    """torchvision's BasicConv2d (conv without bias, BatchNorm, ReLU), BatchNorm folded in."""

    weight: Float[Array, "kh kw I O"]
    bias: Float[Array, " O"]
    stride: int = eqx.field(static=True)
    padding: tuple[int, int] = eqx.field(static=True)

    def __call__(self, x: Float[Array, "N H W I"]) -> Float[Array, "N h w O"]:
        (ph, pw), s = self.padding, self.stride
        y = jax.lax.conv_general_dilated(
            x, self.weight, (s, s), ((ph, ph), (pw, pw)), dimension_numbers=_DIMS
        )
        return jax.nn.relu(y + self.bias)


class Dense(eqx.Module):
    """The classifier `fc`: y = x W + b with W stored (in, out)."""

    weight: Float[Array, "I O"]
    bias: Float[Array, " O"]

    def __call__(self, x: Float[Array, "N I"]) -> Float[Array, "N O"]:
        return x @ self.weight + self.bias


class _Builder:
    """Makes the layers of the network by name; subclasses decide where the arrays come from.

    The network's constructors call `conv` and `dense` with the torch name and shape of each
    layer, so the module structure is the one place where names and shapes are written.
    """

    def conv(self, name: str, cin: int, cout: int, kernel, stride: int = 1, padding=0) -> BasicConv:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        weight, bias = self.conv_arrays(name, cin, cout, kh, kw)
        return BasicConv(weight, bias, stride, (ph, pw))

    def dense(self, name: str, cin: int, cout: int) -> Dense:
        return Dense(*self.dense_arrays(name, cin, cout))

    def conv_arrays(self, name, cin, cout, kh, kw):
        raise NotImplementedError

    def dense_arrays(self, name, cin, cout):
        raise NotImplementedError


def _conv_tensors(name: str, cin: int, cout: int, kh: int, kw: int) -> dict[str, tuple]:
    """Names and shapes of one BasicConv2d in the torch state dict."""
    bn = {f"{name}.bn.{k}": (cout,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {f"{name}.conv.weight": (cout, cin, kh, kw), **bn, f"{name}.bn.num_batches_tracked": ()}


class _Recorder(_Builder):
    """Records the state-dict layout; the layers hold shape placeholders, not arrays."""

    def __init__(self):
        self.layout: dict[str, tuple[int, ...]] = {}

    def conv_arrays(self, name, cin, cout, kh, kw):
        self.layout.update(_conv_tensors(name, cin, cout, kh, kw))
        f32 = jnp.float32
        return jax.ShapeDtypeStruct((kh, kw, cin, cout), f32), jax.ShapeDtypeStruct((cout,), f32)

    def dense_arrays(self, name, cin, cout):
        self.layout.update({f"{name}.weight": (cout, cin), f"{name}.bias": (cout,)})
        f32 = jnp.float32
        return jax.ShapeDtypeStruct((cin, cout), f32), jax.ShapeDtypeStruct((cout,), f32)


class _FromStateDict(_Builder):
    """Takes the arrays from a (checked) state dict: BatchNorm folded into the conv in float64,
    OIHW -> HWIO, fc (out, in) -> (in, out); float32 on the way out."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors

    def conv_arrays(self, name, cin, cout, kh, kw):
        return fold_conv_bn(*(self.tensors[f"{name}.{k}"] for k in _CONV_BN_KEYS))

    def dense_arrays(self, name, cin, cout):
        w = np.asarray(self.tensors[f"{name}.weight"], np.float32).T
        return jnp.asarray(w), jnp.asarray(self.tensors[f"{name}.bias"], jnp.float32)


_CONV_BN_KEYS = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def fold_conv_bn(weight, gamma, beta, mean, var, eps: float = BN_EPS) -> tuple[Array, Array]:
    """Fold inference BatchNorm into the preceding bias-free conv (in float64):
    gamma (conv(x, W) - mean) / sqrt(var + eps) + beta = conv(x, W s) + (beta - mean s),
    s = gamma / sqrt(var + eps).

    Arguments:
        weight: conv kernel (O, I, kh, kw), torch layout.
        gamma, beta, mean, var: BatchNorm scale, shift, running mean and variance (O,).
        eps: BatchNorm epsilon (1e-3 in the Inception graph).

    Returns:
        (kernel (kh, kw, I, O), bias (O,)), float32.
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w = np.asarray(weight, np.float64) * scale[:, None, None, None]
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32), jnp.asarray(bias, jnp.float32)


# --- Pooling (channels-last) -----------------------------------------------------------------


def max_pool(x: Array, stride: int, padding: int = 0) -> Array:
    """3x3 max pool; padding counts as -inf (torch's max_pool2d)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    window, strides = (1, 3, 3, 1), (1, stride, stride, 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)


def avg_pool_same(x: Array) -> Array:
    """3x3, stride 1, padding 1 average pool that divides by the number of in-image pixels
    (count_include_pad=False, TF's 'SAME' average pooling)."""
    window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


# --- Blocks (torchvision names; FID variants of pytorch-fid) --------------------------------


class InceptionA(eqx.Module):
    """35x35 block (Mixed_5b-5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    branch1x1: BasicConv
    branch5x5_1: BasicConv
    branch5x5_2: BasicConv
    branch3x3dbl_1: BasicConv
    branch3x3dbl_2: BasicConv
    branch3x3dbl_3: BasicConv
    branch_pool: BasicConv

    def __init__(self, make: _Builder, name: str, cin: int, pool_features: int):
        self.branch1x1 = make.conv(f"{name}.branch1x1", cin, 64, 1)
        self.branch5x5_1 = make.conv(f"{name}.branch5x5_1", cin, 48, 1)
        self.branch5x5_2 = make.conv(f"{name}.branch5x5_2", 48, 64, 5, padding=2)
        self.branch3x3dbl_1 = make.conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
        self.branch3x3dbl_2 = make.conv(f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
        self.branch3x3dbl_3 = make.conv(f"{name}.branch3x3dbl_3", 96, 96, 3, padding=1)
        self.branch_pool = make.conv(f"{name}.branch_pool", cin, pool_features, 1)

    def __call__(self, x: Array) -> Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(avg_pool_same(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(eqx.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    branch3x3: BasicConv
    branch3x3dbl_1: BasicConv
    branch3x3dbl_2: BasicConv
    branch3x3dbl_3: BasicConv

    def __init__(self, make: _Builder, name: str, cin: int):
        self.branch3x3 = make.conv(f"{name}.branch3x3", cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = make.conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
        self.branch3x3dbl_2 = make.conv(f"{name}.branch3x3dbl_2", 64, 96, 3, padding=1)
        self.branch3x3dbl_3 = make.conv(f"{name}.branch3x3dbl_3", 96, 96, 3, stride=2)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 2)], axis=-1)


class InceptionC(eqx.Module):
    """17x17 block (Mixed_6b-6e) with factorized 7x7 convolutions."""

    branch1x1: BasicConv
    branch7x7_1: BasicConv
    branch7x7_2: BasicConv
    branch7x7_3: BasicConv
    branch7x7dbl_1: BasicConv
    branch7x7dbl_2: BasicConv
    branch7x7dbl_3: BasicConv
    branch7x7dbl_4: BasicConv
    branch7x7dbl_5: BasicConv
    branch_pool: BasicConv

    def __init__(self, make: _Builder, name: str, cin: int, c7: int):
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = make.conv(f"{name}.branch1x1", cin, 192, 1)
        self.branch7x7_1 = make.conv(f"{name}.branch7x7_1", cin, c7, 1)
        self.branch7x7_2 = make.conv(f"{name}.branch7x7_2", c7, c7, **row)
        self.branch7x7_3 = make.conv(f"{name}.branch7x7_3", c7, 192, **col)
        self.branch7x7dbl_1 = make.conv(f"{name}.branch7x7dbl_1", cin, c7, 1)
        self.branch7x7dbl_2 = make.conv(f"{name}.branch7x7dbl_2", c7, c7, **col)
        self.branch7x7dbl_3 = make.conv(f"{name}.branch7x7dbl_3", c7, c7, **row)
        self.branch7x7dbl_4 = make.conv(f"{name}.branch7x7dbl_4", c7, c7, **col)
        self.branch7x7dbl_5 = make.conv(f"{name}.branch7x7dbl_5", c7, 192, **row)
        self.branch_pool = make.conv(f"{name}.branch_pool", cin, 192, 1)

    def __call__(self, x: Array) -> Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = layer(d)
        d = self.branch7x7dbl_5(d)
        pool = self.branch_pool(avg_pool_same(x))
        return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(eqx.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    branch3x3_1: BasicConv
    branch3x3_2: BasicConv
    branch7x7x3_1: BasicConv
    branch7x7x3_2: BasicConv
    branch7x7x3_3: BasicConv
    branch7x7x3_4: BasicConv

    def __init__(self, make: _Builder, name: str, cin: int):
        self.branch3x3_1 = make.conv(f"{name}.branch3x3_1", cin, 192, 1)
        self.branch3x3_2 = make.conv(f"{name}.branch3x3_2", 192, 320, 3, stride=2)
        self.branch7x7x3_1 = make.conv(f"{name}.branch7x7x3_1", cin, 192, 1)
        self.branch7x7x3_2 = make.conv(f"{name}.branch7x7x3_2", 192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = make.conv(f"{name}.branch7x7x3_3", 192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = make.conv(f"{name}.branch7x7x3_4", 192, 192, 3, stride=2)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class InceptionE(eqx.Module):
    """8x8 block (Mixed_7b: average pool branch; Mixed_7c: max pool branch, the FID graph's)."""

    branch1x1: BasicConv
    branch3x3_1: BasicConv
    branch3x3_2a: BasicConv
    branch3x3_2b: BasicConv
    branch3x3dbl_1: BasicConv
    branch3x3dbl_2: BasicConv
    branch3x3dbl_3a: BasicConv
    branch3x3dbl_3b: BasicConv
    branch_pool: BasicConv
    max_pool_branch: bool = eqx.field(static=True)

    def __init__(self, make: _Builder, name: str, cin: int, max_pool_branch: bool):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = make.conv(f"{name}.branch1x1", cin, 320, 1)
        self.branch3x3_1 = make.conv(f"{name}.branch3x3_1", cin, 384, 1)
        self.branch3x3_2a = make.conv(f"{name}.branch3x3_2a", 384, 384, **row)
        self.branch3x3_2b = make.conv(f"{name}.branch3x3_2b", 384, 384, **col)
        self.branch3x3dbl_1 = make.conv(f"{name}.branch3x3dbl_1", cin, 448, 1)
        self.branch3x3dbl_2 = make.conv(f"{name}.branch3x3dbl_2", 448, 384, 3, padding=1)
        self.branch3x3dbl_3a = make.conv(f"{name}.branch3x3dbl_3a", 384, 384, **row)
        self.branch3x3dbl_3b = make.conv(f"{name}.branch3x3dbl_3b", 384, 384, **col)
        self.branch_pool = make.conv(f"{name}.branch_pool", cin, 192, 1)
        self.max_pool_branch = max_pool_branch

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        pooled = max_pool(x, 1, padding=1) if self.max_pool_branch else avg_pool_same(x)
        return jnp.concatenate([self.branch1x1(x), b3, d, self.branch_pool(pooled)], axis=-1)


class InceptionV3(eqx.Module):
    """The FID Inception-v3 (inference): images -> (pool3 features, logits)."""

    Conv2d_1a_3x3: BasicConv
    Conv2d_2a_3x3: BasicConv
    Conv2d_2b_3x3: BasicConv
    Conv2d_3b_1x1: BasicConv
    Conv2d_4a_3x3: BasicConv
    Mixed_5b: InceptionA
    Mixed_5c: InceptionA
    Mixed_5d: InceptionA
    Mixed_6a: InceptionB
    Mixed_6b: InceptionC
    Mixed_6c: InceptionC
    Mixed_6d: InceptionC
    Mixed_6e: InceptionC
    Mixed_7a: InceptionD
    Mixed_7b: InceptionE
    Mixed_7c: InceptionE
    fc: Dense

    def __init__(self, make: _Builder):
        self.Conv2d_1a_3x3 = make.conv("Conv2d_1a_3x3", 3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = make.conv("Conv2d_2a_3x3", 32, 32, 3)
        self.Conv2d_2b_3x3 = make.conv("Conv2d_2b_3x3", 32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = make.conv("Conv2d_3b_1x1", 64, 80, 1)
        self.Conv2d_4a_3x3 = make.conv("Conv2d_4a_3x3", 80, 192, 3)
        self.Mixed_5b = InceptionA(make, "Mixed_5b", 192, 32)
        self.Mixed_5c = InceptionA(make, "Mixed_5c", 256, 64)
        self.Mixed_5d = InceptionA(make, "Mixed_5d", 288, 64)
        self.Mixed_6a = InceptionB(make, "Mixed_6a", 288)
        self.Mixed_6b = InceptionC(make, "Mixed_6b", 768, 128)
        self.Mixed_6c = InceptionC(make, "Mixed_6c", 768, 160)
        self.Mixed_6d = InceptionC(make, "Mixed_6d", 768, 160)
        self.Mixed_6e = InceptionC(make, "Mixed_6e", 768, 192)
        self.Mixed_7a = InceptionD(make, "Mixed_7a", 768)
        self.Mixed_7b = InceptionE(make, "Mixed_7b", 1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(make, "Mixed_7c", 2048, max_pool_branch=True)
        self.fc = make.dense("fc", NUM_FEATURES, NUM_CLASSES)

    def __call__(
        self, images: Float[Array, "N H W C"]
    ) -> tuple[Float[Array, "N 2048"], Float[Array, "N 1008"]]:
        """Pool3 features and logits of a batch.

        Arguments:
            images: (N, H, W, 3) (or 1 channel, repeated) in [-1, 1] as floats, or uint8 in
                [0, 255]; any size, resized to 299 x 299 (see `preprocess`).

        Returns:
            (pool3 (N, 2048), logits (N, 1008)), float32.
        """
        x = preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool(x, 2)))
        x = max_pool(x, 2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
            self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, self.fc(pool3)


# --- Input handling --------------------------------------------------------------------------


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix of torch's bilinear interpolation along one axis with
    align_corners=False and no antialiasing: source coordinate (i + 0.5) * in/out - 0.5,
    clamped at 0, linear between its two neighbours (the upper one clamped to the edge)."""
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros((size_out, size_in))
    np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m.astype(np.float32)


def preprocess(images: Array, size: int = INPUT_SIZE) -> Float[Array, "N size size 3"]:
    """pytorch-fid's input handling, channels-last: uint8 in [0, 255] -> [-1, 1] (x / 127.5 - 1,
    the same as pytorch-fid's 2 (x / 255) - 1); floats are taken as [-1, 1]; one channel is
    repeated to three; bilinear resize to size x size (`bilinear_matrix`; resizing commutes
    with the affine rescaling, so doing it in [-1, 1] changes nothing)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 3) or (N, H, W, 1), got {images.shape}")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 127.5 - 1.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        x = images.astype(jnp.float32)
    else:
        raise TypeError(f"expected uint8 or float images, got dtype {images.dtype}")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    if (h, w) != (size, size):
        rows, cols = jnp.asarray(bilinear_matrix(h, size)), jnp.asarray(bilinear_matrix(w, size))
        x = jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)
    return x


# --- Weights ---------------------------------------------------------------------------------


def inception_layout() -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of the standard .pth state dict (566), in module order,
    read off the network's constructors (no arrays are made)."""
    recorder = _Recorder()
    InceptionV3(recorder)
    return dict(recorder.layout)


def _names(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_layout(tensors: dict[str, np.ndarray], source: str) -> None:
    """Refuse a state dict that is not the standard layout, naming each missing, extra and
    misshaped tensor and the file."""
    layout = inception_layout()
    missing = layout.keys() - tensors.keys()
    extra = tensors.keys() - layout.keys()
    shapes = [
        f"{k} {tuple(np.shape(tensors[k]))} (expected {layout[k]})"
        for k in layout.keys() & tensors.keys()
        if tuple(np.shape(tensors[k])) != layout[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_names(extra)}")
    if shapes:
        problems.append(f"wrong shapes: {_names(shapes)}")
    if problems:
        raise ValueError(
            f"{source}: not the standard FID Inception weights ({STANDARD_PTH} layout, "
            f"{len(layout)} tensors): " + "; ".join(problems)
        )


def inception_from_state_dict(tensors: dict[str, np.ndarray], source: str = "state dict"):
    """Build the network from a state dict with the standard names and shapes.

    Arguments:
        tensors: name -> array, torch layout (OIHW kernels, (out, in) fc weight).
        source: what to call the tensors in errors (a file name).

    Returns:
        The InceptionV3 module, BatchNorm folded, float32.
    """
    check_layout(tensors, source)
    bad = [k for k, v in tensors.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
    if bad:
        raise ValueError(f"{source}: non-finite values in {_names(bad)}")
    return InceptionV3(_FromStateDict(tensors))


def resolve_weights_path(spec_path: str | os.PathLike | None) -> Path:
    """Where the weight file is: the spec's `evaluate.inception_weights`, else the environment
    variable DRLX_INCEPTION_WEIGHTS. A missing file is an error saying where to put one and how
    to make it (nothing is downloaded)."""
    chosen = spec_path if spec_path is not None else os.environ.get(ENV_WEIGHTS)
    how = (
        f"Download {STANDARD_PTH} (pytorch-fid's release 'fid_weights'), convert it with "
        f"`pip install drlx[torch]` and `drlx convert-inception {STANDARD_PTH} "
        "inception.safetensors`, then set `evaluate.inception_weights` in the spec or the "
        f"environment variable {ENV_WEIGHTS} to the .safetensors file."
    )
    if chosen is None:
        raise FileNotFoundError(
            f"no Inception weights: neither evaluate.inception_weights nor {ENV_WEIGHTS} is set. "
            + how
        )
    path = Path(chosen)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception weight file not found. " + how)
    return path


def load_inception(path: str | os.PathLike) -> InceptionV3:
    """Load the network from a safetensors file in the standard layout (see module docstring).

    Arguments:
        path: the .safetensors file (numpy flavour; no code is unpickled).

    Returns:
        The InceptionV3 module.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception weight file not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return inception_from_state_dict(tensors, str(path))


def synthetic_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the standard layout (for tests and as a spec of the format): He-scaled
    kernels, BatchNorm scales near 1, small shifts and means, variances in [0.5, 1.5],
    num_batches_tracked int64 scalars; fc scaled 1/sqrt(2048). Activations stay O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in inception_layout().items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(0, np.int64)
        elif name.endswith("conv.weight") or name == "fc.weight":
            fan_in = int(np.prod(shape[1:]))
            out[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith("bn.weight"):
            out[name] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:  # bn.bias, bn.running_mean, fc.bias
            out[name] = rng.normal(0.0, 0.1, shape).astype(np.float32)
    return out


def write_synthetic_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write `synthetic_state_dict(seed)` as a safetensors file; returns the path."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(synthetic_state_dict(seed), str(path))
    return path


def convert_inception_weights(src_pth: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Convert the standard .pth (pt_inception-2015-12-05-6726825d.pth) to safetensors, same
    names and shapes. Loads with `torch.load(weights_only=True)` (tensors only, no code).

    Arguments:
        src_pth: the .pth state dict.
        dst: the .safetensors file to write.

    Returns:
        The number of tensors written.
    """
    try:
        import torch
    except ImportError:
        raise ImportError(
            "converting a .pth needs PyTorch: `pip install drlx[torch]` (only for this command)"
        ) from None
    from safetensors.numpy import save_file

    from drlx.io import atomic_path

    src = Path(src_pth)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file (expected {STANDARD_PTH})")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that needs code to unpickle
        raise ValueError(f"{src}: cannot be read as a tensor-only state dict ({err})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{src}: expected a flat state dict of tensors")
    tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}
    check_layout(tensors, str(src))
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp))
    return len(tensors)
