"""Helpers shared by the tests: spec files written on the fly, and a quadratic energy network
whose conditional densities are Gaussian in closed form."""

import io
import os
import tarfile
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import yaml
from jaxtyping import Array

from drlx.models.base import AbstractEnergyNetwork

# Tests that run the stages as processes (a DVC pipeline, a killed and resumed training) spend
# most of their minutes compiling, little computing: XLA's CPU backend then compiles without
# LLVM's optimisation passes (the same XLA programs, their machine code less optimised). On a
# 2-core machine the killed-and-resumed trainings took 106 s instead of 149 with it and a shared
# compilation cache (the paper specs' two-iteration runs 184 s instead of 327, but they run in
# the test's own process). The in-process tests keep the default: the statistical ones run long
# chains and were up to 3x slower with it.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def fast_compile_env(cache: Path | None = None) -> dict[str, str]:
    """This process's environment for a stage subprocess: FAST_COMPILE_FLAG added to XLA_FLAGS
    and, given `cache`, JAX's persistent compilation cache there (processes that compile the
    same program, e.g. a run and its resumption, compile it once)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    return env


# A complete spec with no `extends` (every block spelled out), used to make broken variants.
FULL_SPEC = """\
name: test_spec
seed: 3
data:
  kind: toy2d
  name: eight_gaussians
  num_train: 1000
  num_heldout: 100
diffusion:
  kind: drl_linear
  num_levels: 6
  beta_start: 1e-4
  beta_end: 0.02
model:
  kind: mlp
  width: 32
  depth: 2
sampler:
  kind: ula
  num_steps: 30
  step_size_b2: 4e-3
objective:
  weighting: drl
train:
  num_steps: 100
  learning_rate: 1e-3
runtime:
  progress: false
"""


def write(directory: Path, name: str, text: str) -> Path:
    """Write `text` to directory/name and return the path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of `text` that contains `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with the single occurrence of `old` replaced by `new`."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


class AbstractFixedNetwork(AbstractEnergyNetwork):
    """A test network without spectral norms or precomputation: only embed and energy left."""

    def power_iteration(self):
        return self

    def precompute(self):
        return self


class QuadraticEnergy(AbstractFixedNetwork):
    """g(y, t) = -k_t ||y - m||^2 / (2 v), with k_t the EBM's output scale (`g_scale`): the
    level's log-density g / k_t is N(m, v I), so with the tether p(y | x~) is Gaussian with
    precision 1/v + 1/sigma^2 (1/v at the untethered top level)."""

    mean: Array
    var: float
    scale: Array

    def embed(self, t: Array) -> tuple[Array, ...]:
        return (self.scale[t],)

    def energy(self, y: Array, context: tuple[Array, ...]) -> Array:
        (k,) = context
        return -k * jnp.sum((y - self.mean) ** 2, axis=-1) / (2.0 * self.var)


def random_mlp(key, dim: int = 2, width: int = 16, depth: int = 2, fourier_features: int = 0):
    """A small MLPEnergy whose read-out is random rather than zero, so that g depends on every
    parameter (drlx initialises the read-out at zero, which makes g identically 0)."""
    import jax

    from drlx.models.mlp import MLPEnergy

    k_net, k_w, k_b = jax.random.split(key, 3)
    net = MLPEnergy(
        dim=dim,
        width=width,
        depth=depth,
        embed_dim=8,
        activation="silu",
        fourier_features=fourier_features,
        fourier_scale=1.0,
        key=k_net,
    )
    shape_w, shape_b = net.readout.weight.shape, net.readout.bias.shape
    new = (
        jax.random.normal(k_w, shape_w) / width**0.5,
        0.1 * jax.random.normal(k_b, shape_b),
    )
    return eqx.tree_at(lambda n: (n.readout.weight, n.readout.bias), net, new)


# ---- synthetic files in the real CIFAR-10 binary format ----
BATCHES = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)] + [
    "cifar-10-batches-bin/test_batch.bin"
]


def cifar_records(n: int, offset: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records whose R, G and B planes hold distinct values; returns bytes, images, labels."""
    rng = np.random.default_rng(offset)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    planes = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    planes[:, 0, 0, 0], planes[:, 1, 0, 0], planes[:, 2, 0, 0] = 10, 20, 30
    table = np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1)
    return table.tobytes(), planes.transpose(0, 2, 3, 1), labels


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---- synthetic files in the real downsampled ImageNet 32x32 format ----
def imagenet32_rows(n: int, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n rows of an ImageNet32 file: `data` (n, 3072) uint8, the R, G and B planes one after
    the other, pixel (0, 0) of the three planes 10, 20, 30 and pixel (0, 1) of R 200; `labels`
    (n,) in 1..1000 (the first 1). Returns data, labels and the images (n, 32, 32, 3)."""
    rng = np.random.default_rng(1000 + offset)
    planes = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    planes[:, 0, 0, 0], planes[:, 1, 0, 0], planes[:, 2, 0, 0] = 10, 20, 30
    planes[:, 0, 0, 1] = 200
    labels = rng.integers(1, 1001, n)
    labels[0] = 1
    return planes.reshape(n, -1), labels, planes.transpose(0, 2, 3, 1)


def write_imagenet32(folder: Path, rows: int = 3, val_rows: int = 6, subfolders: bool = False):
    """train_data_batch_1..10.npz (`data`, `labels`, `mean`) with `rows` rows each and
    val_data.npz (`data`, `labels`) with `val_rows`, in `folder` (or in the official zip
    files' folders); returns {file name: (images, 0-based labels)}."""
    names = [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]
    truth = {}
    for i, name in enumerate(names):
        data, labels, images = imagenet32_rows(val_rows if name == "val_data.npz" else rows, i)
        extra = {} if name == "val_data.npz" else {"mean": data.mean(axis=0)}
        where = folder
        if subfolders:
            where = folder / ("Imagenet32_val_npz" if "val" in name else "Imagenet32_train_npz")
        where.mkdir(parents=True, exist_ok=True)
        np.savez(where / name, data=data, labels=labels, **extra)
        truth[name] = (images, labels - 1)
    return truth


# ---- a tiny toy spec for tests that run training ----
# CDRL's initializer block for tiny_toy_spec: a second model, optimizer and EMA in the state
INITIALIZER = {"kind": "mlp", "width": 32, "depth": 2, "learning_rate": 1e-3, "ema_decay": 0.99}


def tiny_toy_spec(path: Path, name: str, **blocks: dict) -> Path:
    """Write a spec extending specs/bases/toy2d.yaml with a small two_moons set and a small MLP;
    `blocks` (e.g. train={...}) are merged over those defaults block by block."""
    root = Path(__file__).resolve().parents[1]
    spec = {
        "extends": str(root / "specs/bases/toy2d.yaml"),
        "name": name,
        "data": {"name": "two_moons", "num_train": 2000, "num_heldout": 300},
        "model": {"width": 32, "depth": 2},
        "runtime": {"progress": False},
    }
    for block, values in blocks.items():
        spec[block] = {**spec.get(block, {}), **values}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# The pipeline tests' experiment: every stage of dvc.yaml in seconds (density settings tiny too).
TINY_DENSITY = (
    "density: {num_heldout: 40, num_chains: 4, num_annealing_steps: 10, top_chains: 16,\n"
    "  num_quadrature_checks: 12, quadrature_resolution: 32, check_chains: 4,\n"
    "  check_annealing_steps: 10, check_chains_level_0: 4, check_annealing_steps_level_0: 10,\n"
    "  long_run_steps: 200, long_run_thin: 50,\n"
    "  long_run_horizons: [50], long_run_chains: 64}\n"
)
# params.yaml of a repository that runs only `tiny` (no digits: no feature stages)
TINY_PARAMS = (
    "experiments:\n  tiny:\n    base: specs/bases/toy2d.yaml\nfeature_experiments: {}\n"
    "sweeps: {}\nfeature_sweeps: {}\nood_experiments: {}\n"
)
