"""The FID Inception-v3: weight layout and loader, BatchNorm folding against numpy, pooling and
resizing against independent computations, FID identities, Inception Score closed forms, the
stages' and the converter's error paths. Random weights in the standard layout stand in for the
real file (not downloadable here)."""

import functools
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
from helpers import FULL_SPEC, write
from typer.testing import CliRunner

from drlx.cli import app
from drlx.evaluate import inception as inc
from drlx.evaluate.feature_metrics import (
    feature_frechet_distance,
    frechet_distance,
    gaussian_statistics,
)
from drlx.evaluate.fid import (
    check_images,
    inception_outputs,
    inception_score,
    reference_statistics,
    sample_metrics,
    to_uint8,
)
from drlx.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

NUM_CONVS = 94  # BasicConv2d blocks of torchvision's Inception3 without the auxiliary head


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return inc.write_synthetic_weights(tmp_path_factory.mktemp("w") / "inception.safetensors")


@pytest.fixture(scope="module")
def state(weights_file) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(weights_file)


@pytest.fixture(scope="module")
def model(weights_file) -> inc.InceptionV3:
    return inc.load_inception(weights_file)


def _layer(model, name: str):
    return functools.reduce(getattr, name.split("."), model)


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Random images in [-1, 1] with some spatial structure (4x4 noise, upsampled)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32)
    return np.clip(np.asarray(jax.image.resize(low, (n, size, size, 3), "linear")), -1, 1)


# ---- layout and loader -------------------------------------------------------------------------
def test_layout_is_the_standard_state_dict():
    layout = inc.inception_layout()
    # 94 BasicConv2d x (conv.weight + 4 BatchNorm arrays + num_batches_tracked) + fc weight, bias
    assert len(layout) == NUM_CONVS * 6 + 2 == 566
    assert sum(k.endswith(".conv.weight") for k in layout) == NUM_CONVS
    assert layout["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert layout["Conv2d_1a_3x3.bn.running_mean"] == (32,)
    assert layout["Conv2d_1a_3x3.bn.num_batches_tracked"] == ()
    assert layout["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert layout["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
    assert layout["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert layout["fc.weight"] == (1008, 2048) and layout["fc.bias"] == (1008,)
    # torchvision lists Inception3 at 27,161,264 parameters with the auxiliary head (3,326,696)
    # and 1000 classes; the FID graph has no aux head and 1008 classes (+8 * 2049).
    learned = [s for k, s in layout.items() if "running" not in k and "num_batches" not in k]
    assert sum(int(np.prod(s)) for s in learned) == 27_161_264 - 3_326_696 + 8 * 2049


def test_loader_reads_every_tensor_and_maps_it(state):
    used = set()

    class Recording(dict):
        def __getitem__(self, key):
            used.add(key)
            return super().__getitem__(key)

    net = inc.InceptionV3(inc._FromStateDict(Recording(state)))
    layout = inc.inception_layout()
    # every tensor but BatchNorm's step counter (not used at inference) reaches the network
    assert used == {k for k in layout if not k.endswith("num_batches_tracked")}
    assert len(used) == len(layout) - NUM_CONVS
    # Each conv, on one random receptive field, against conv + BatchNorm + ReLU in numpy on
    # the torch tensors (OIHW): checks the name -> layer mapping and the BN semantics.
    rng = np.random.default_rng(1)
    for name in (k[: -len(".conv.weight")] for k in layout if k.endswith(".conv.weight")):
        w = state[f"{name}.conv.weight"].astype(np.float64)
        patch = rng.normal(size=w.shape[1:])  # (I, kh, kw)
        g, b, m, v = (state[f"{name}.bn.{k}"] for k in ("weight", "bias", "running_mean",
                                                         "running_var"))  # fmt: skip
        want = np.maximum(g * (np.einsum("oihw,ihw->o", w, patch) - m) / np.sqrt(v + 1e-3) + b, 0)
        layer = _layer(net, name)
        weight, bias = np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64)
        got = np.maximum(np.einsum("hwio,ihw->o", weight, patch) + bias, 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(net.fc.weight, state["fc.weight"].T)
    np.testing.assert_array_equal(net.fc.bias, state["fc.bias"])


def test_loader_refuses_wrong_layouts(state, tmp_path):
    from safetensors.numpy import save_file

    missing = {k: v for k, v in state.items() if k != "Mixed_6b.branch1x1.bn.running_var"}
    extra = {**state, "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}
    shaped = {**state, "fc.weight": np.zeros((1000, 2048), np.float32)}
    cases = {
        "missing tensors: Mixed_6b.branch1x1.bn.running_var": missing,
        "unexpected tensors: AuxLogits.fc.weight": extra,
        "wrong shapes: fc.weight (1000, 2048) (expected (1008, 2048))": shaped,
    }
    for message, tensors in cases.items():
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ValueError) as err:
            inc.load_inception(path)
        assert str(path) in str(err.value) and message in str(err.value)
    garbage = write(tmp_path, "garbage.safetensors", "not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors"):
        inc.load_inception(garbage)
    nan = {**state, "fc.bias": np.full(1008, np.nan, np.float32)}
    with pytest.raises(ValueError, match="non-finite values in fc.bias"):
        inc.inception_from_state_dict(nan, "nan file")


# ---- layers against independent computations ------------------------------------------------
def _numpy_conv_bn(x_nchw, w, g, b, m, v, stride, padding):
    """conv (cross-correlation, OIHW) + inference BatchNorm (eps 1e-3) + ReLU, loops in numpy."""
    (ph, pw), (o, _, kh, kw) = padding, w.shape
    x = np.pad(x_nchw, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            y += np.einsum("nchw,oc->nohw", window, w[:, :, i, j])
    shape = (1, -1, 1, 1)
    y = (y - m.reshape(shape)) / np.sqrt(v.reshape(shape) + 1e-3) * g.reshape(shape)
    return np.maximum(y + b.reshape(shape), 0.0)


@pytest.mark.parametrize(
    "name, stride, padding",
    [("Conv2d_1a_3x3", 2, (0, 0)), ("Mixed_6b.branch7x7_2", 1, (0, 3)),
     ("Mixed_7b.branch3x3_2b", 1, (1, 0))],
)  # fmt: skip
def test_conv_bn_block_matches_numpy(state, model, name, stride, padding):
    layer = _layer(model, name)
    assert (layer.stride, layer.padding) == (stride, padding)
    w = state[f"{name}.conv.weight"].astype(np.float64)
    bn = [state[f"{name}.bn.{k}"].astype(np.float64) for k in
          ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
    x = np.random.default_rng(2).normal(size=(2, w.shape[1], 11, 9))
    want = _numpy_conv_bn(x, w, *bn, stride, padding)
    got = layer(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


def test_pools_match_numpy():
    x = np.random.default_rng(3).normal(size=(2, 5, 6, 4)).astype(np.float32)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    avg = np.zeros_like(x)
    mx = np.zeros_like(x)
    for i in range(5):
        for j in range(6):
            window = pad[:, i : i + 3, j : j + 3]
            avg[:, i, j] = np.nanmean(window, axis=(1, 2))  # padding not counted
            mx[:, i, j] = np.nanmax(window, axis=(1, 2))
    np.testing.assert_allclose(inc.avg_pool_same(jnp.asarray(x)), avg, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(inc.max_pool(jnp.asarray(x), 1, padding=1), mx)
    strided = np.zeros((2, 2, 2, 4), np.float32)  # 3x3 windows at stride 2, no padding
    for i in range(2):
        for j in range(2):
            strided[:, i, j] = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    np.testing.assert_array_equal(inc.max_pool(jnp.asarray(x), 2), strided)


def test_bilinear_resize_is_torchs():
    # align_corners=False, 2 -> 4: [x0, 3/4 x0 + 1/4 x1, 1/4 x0 + 3/4 x1, x1] (edges clamped)
    np.testing.assert_allclose(
        inc.bilinear_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )
    np.testing.assert_allclose(inc.bilinear_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # jax.image.resize (half-pixel centres, no antialiasing) is the same map up and down
    x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 20, 3)).astype(np.float32)
    for size in (299, 7):
        want = jax.image.resize(x, (2, size, size, 3), "linear", antialias=False)
        got = inc.preprocess(jnp.asarray(x), size)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_preprocess_uint8_and_gray():
    pixels = np.random.default_rng(5).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    as_float = pixels.astype(np.float32) / 127.5 - 1.0
    a = inc.preprocess(jnp.asarray(pixels), 16)
    b = inc.preprocess(jnp.asarray(np.repeat(as_float, 3, axis=-1)), 16)
    assert a.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(as_float), pixels)  # 8-bit data round-trips
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        check_images(as_float * 2)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        check_images(np.zeros((2, 8, 8, 2), np.float32))


# ---- Inception Score ---------------------------------------------------------------------------
def test_inception_score_closed_forms():
    assert inception_score(np.zeros((50, 1008))) == pytest.approx((1.0, 0.0), abs=1e-12)
    # confident and balanced within every split: IS = number of classes
    k = 7
    labels = np.tile(np.arange(k), 10 * 3)  # 10 splits of 3 rounds of the k classes
    logits = 60.0 * np.eye(k)[labels]
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # a random case against scipy's softmax and relative entropy, 10 uneven splits of 53
    z = np.random.default_rng(6).normal(0, 3, (53, 12))
    p = scipy.special.softmax(z, axis=1)
    scores = []
    for k in range(10):
        part = p[k * 53 // 10 : (k + 1) * 53 // 10]
        kl = scipy.special.rel_entr(part, part.mean(axis=0)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    assert inception_score(z) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(np.zeros((9, 1008)))


# ---- the whole network -------------------------------------------------------------------------
@pytest.mark.slow
def test_fid_zero_on_itself_and_grows_with_noise(model):
    # 6 clean images, 3 noisy copies (same noise, growing scale), the first 4 clean ones again:
    # 28 images in chunks of 10, so the repeats sit in the padded last chunk.
    n = 6
    x = _smooth_images(n, 32, seed=7)
    eps = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
    sets = [x] + [np.clip(x + s * eps, -1, 1) for s in (0.1, 0.3, 1.0)] + [x[:4]]
    features, logits = inception_outputs(model, np.concatenate(sets), 10, progress=False)
    assert features.shape == (4 * n + 4, 2048) and logits.shape == (4 * n + 4, 1008)
    assert np.all(np.isfinite(features)) and features.std() > 0.1
    # batch position and padding do not change an image's features
    np.testing.assert_allclose(features[-4:], features[:4], rtol=1e-4, atol=1e-4)
    # 2048-D Frechet distances of 6 vectors each: from the centred features, no 2048 x 2048
    # decomposition (tests/test_feature_metrics.py checks that route against closed forms)
    clean = features[:n]
    assert abs(feature_frechet_distance(clean, clean)) < 1e-6
    fids = [feature_frechet_distance(clean, features[i * n : (i + 1) * n]) for i in (1, 2, 3)]
    assert 1e-3 < fids[0] < fids[1] < fids[2], fids


def test_sample_metrics_against_independent_formulas():
    # low-dimensional features so that scipy's sqrtm is a quick independent reference
    rng = np.random.default_rng(9)
    data = rng.normal(size=(200, 6))
    samples = rng.normal(0.3, 1.2, size=(200, 6))
    logits = rng.normal(0, 2, size=(200, 5))
    ref = reference_statistics(data, num_kid_features=150, seed=0)
    kept = {tuple(r) for r in ref["kid_features"]}
    assert len(kept) == 150 and kept <= {tuple(r) for r in data.astype(np.float32)}
    assert int(ref["num_images"]) == 200
    np.testing.assert_allclose(ref["mu"], data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ref["sigma"], np.cov(data, rowvar=False), rtol=1e-10)
    ref = reference_statistics(data, num_kid_features=200)  # all rows: KID subsets = whole sets
    metrics = sample_metrics(samples, logits, ref, kid_subsets=2, kid_subset_size=1000)
    s1, s2 = np.cov(samples, rowvar=False), np.cov(data, rowvar=False)
    diff = samples.mean(axis=0) - data.mean(axis=0)
    want = diff @ diff + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert metrics["fid"] == pytest.approx(want, rel=1e-8)
    assert (metrics["inception_score"], metrics["inception_score_std"]) == inception_score(logits)
    # KID: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, diagonal terms left out
    y = ref["kid_features"].astype(np.float64)
    kxx, kyy, kxy = ((u @ v.T / 6 + 1) ** 3 for u, v in ((samples, samples), (y, y), (samples, y)))
    n = 200
    mmd = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    assert metrics["kid"] == pytest.approx(mmd, rel=1e-6) and metrics["kid_std"] < 1e-9
    assert metrics["num_samples"] == 200
    # the spread over disjoint blocks: block b's FID is the FID of its own 20 rows
    blocks = metrics["blocks"]
    assert blocks["num_blocks"] == 10 and blocks["size"] == 20
    mu, sigma = samples[20:40].mean(axis=0), np.cov(samples[20:40], rowvar=False)
    d = mu - data.mean(axis=0)
    s1 = sigma
    want = d @ d + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert blocks["fid"]["values"][1] == pytest.approx(want, rel=1e-6)
    assert blocks["fid"]["low"] < blocks["fid"]["mean"] < blocks["fid"]["high"]
    assert blocks["fid"]["mean"] > metrics["fid"]  # fewer samples, larger FID


def test_sample_metrics_fid_with_fewer_samples_than_dimensions():
    # blocks of 12 vectors in 48 dimensions (rank 11), a reference of 30 (rank 29): the FIDs
    # against the textbook sqrtm(S1 S2) and against frechet_distance on the statistics
    rng = np.random.default_rng(10)
    d = 48
    data = rng.normal(size=(30, d)) @ rng.normal(size=(d, d)) * 0.2
    samples = rng.normal(0.2, 0.7, size=(36, d))
    ref = reference_statistics(data, num_kid_features=30)
    metrics = sample_metrics(samples, rng.normal(size=(36, 5)), ref, kid_subsets=1, num_blocks=3)

    def textbook(x):
        s1, s2 = np.cov(x, rowvar=False), np.cov(data, rowvar=False)
        diff = x.mean(axis=0) - data.mean(axis=0)
        return diff @ diff + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))

    assert metrics["fid"] == pytest.approx(textbook(samples), rel=1e-6)
    assert metrics["blocks"]["size"] == 12
    for b, value in enumerate(metrics["blocks"]["fid"]["values"]):
        rows = samples[b * 12 : (b + 1) * 12]
        assert value == pytest.approx(textbook(rows), rel=1e-6)
        exact = frechet_distance(*gaussian_statistics(rows), ref["mu"], ref["sigma"])
        assert value == pytest.approx(exact, rel=1e-12)


# ---- spec, weights path, stages, converter ---------------------------------------------------
def test_weights_path_from_spec_or_environment(tmp_path, weights_file, monkeypatch):
    block = f"evaluate:\n  inception_weights: {weights_file}\nruntime:"
    text = FULL_SPEC.replace("runtime:", block)
    spec = load_spec(write(tmp_path, "a.yaml", text))
    plain = load_spec(write(tmp_path, "b.yaml", FULL_SPEC))
    assert spec.evaluate.inception_weights == str(weights_file)
    assert spec.scientific_hash() == plain.scientific_hash()  # a location, not science
    monkeypatch.setenv(inc.ENV_WEIGHTS, str(tmp_path / "elsewhere.safetensors"))
    assert inc.resolve_weights_path(spec.evaluate.inception_weights) == weights_file
    with pytest.raises(FileNotFoundError, match="elsewhere.safetensors: Inception weight file"):
        inc.resolve_weights_path(None)
    monkeypatch.delenv(inc.ENV_WEIGHTS)
    with pytest.raises(FileNotFoundError, match="convert-inception"):
        inc.resolve_weights_path(None)


def test_fid_stages_without_weights_say_where_to_put_them(tmp_path):
    spec = write(tmp_path, "s.yaml", FULL_SPEC)
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    commands = [
        ["stages/fid_reference.py", "--data", str(tmp_path / "d.npz"), "--out", str(out / "r.npz")],
        ["stages/fid.py", "--samples", str(tmp_path / "s.npz"), "--reference",
         str(out / "r.npz"), "--metrics", str(out / "m.json")],
    ]  # fmt: skip
    # both stages at once (each is mostly Python start-up, one core each)
    running = [
        subprocess.Popen(
            [str(PYTHON), *cmd, "--spec", str(spec)],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for cmd in commands
    ]
    for proc in running:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0
        for needle in ("DRLX_INCEPTION_WEIGHTS", "evaluate.inception_weights", "convert-inception"):
            assert needle in stderr, stderr
        assert "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_convert_command(tmp_path, state):
    src, dst = tmp_path / "w.pth", tmp_path / "w.safetensors"
    try:
        import torch
    except ImportError:  # the optional extra is absent: the command says how to get it
        src.write_bytes(b"")
        result = CliRunner().invoke(app, ["convert-inception", str(src), str(dst)])
        assert result.exit_code == 1 and "pip install drlx[torch]" in result.output
        assert not dst.exists()
        return
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, src)
    result = CliRunner().invoke(app, ["convert-inception", str(src), str(dst)])
    assert result.exit_code == 0 and "566 tensors" in result.output
    converted = inc.load_inception(dst)
    assert eqx.tree_equal(converted, inc.inception_from_state_dict(state))
