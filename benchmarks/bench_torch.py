"""The PyTorch (CPU build, oneDNN) baseline of benchmarks/bench_network.py, run on this machine.

Reads the networks that bench_network.py exported and rebuilds each in PyTorch from every array
drlx trains (raw kernels with their spectral-norm vectors and scales, the level embedding's
dense layers): the chain computes the normalized kernels, level biases and read-out once, as a
drlx chain does (checked to give the JAX network's g on the batch); the training step
differentiates in all of them, as drlx's step does (mean g on y+ and on y-, and their
gradients, checked against drlx's).
Then times the same two workloads: a 10-step Langevin chain (forward + gradient in the input per
step) and a training step's forward + backward in the parameters. Channels-last tensors, eager
mode, torch's default threads (one per core). Until this rebuild of the training step the
baseline trained only the fixed normalized kernels and biases, less work than drlx's step.

Usage: python benchmarks/bench_torch.py EXPORT_DIR OUT_JSON   (needs torch and numpy only;
`make bench` creates .venv-torch with the CPU wheel of torch for it).
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CHAIN_STEPS = 10
# largest relative difference of PyTorch's mean g on a batch, and of its gradient in every
# parameter, from drlx's (both float32) allowed: float32 rounding gave up to ~3e-3 (the full
# CIFAR network's 32 blocks); a wrong or missing term differs by O(1). (Rebuilt in float64,
# PyTorch's loss gradients equal drlx's float64 ones to ~4e-8 on CIFAR width 32.)
TRAIN_TOLERANCE = 1e-2


def _conv(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (torch.linalg.vector_norm(v) + 1e-12)


def _spectral(weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """weight / sigma_hat with drlx's estimate (drlx.models.layers.spectral_norm_estimate):
    sigma_hat = u^T M v, v = unit(M^T u), u and v held fixed, M the weight as (out, rest).
    The order of M's columns does not change sigma_hat, so OIHW kernels reshape directly."""
    matrix = weight.reshape(weight.shape[0], -1)
    v = _unit(matrix.detach().T @ u)
    return weight / (u @ (matrix @ v))


class Net:
    """ResNetEnergy rebuilt from drlx's trained arrays: raw kernels normalized by their
    spectral-norm estimates and scaled, the level embedding's dense layers
    (sinusoidal -> Dense -> act -> Dense -> act -> per-block level biases and read-out), all
    differentiable, as `train_grads` in bench_network.py differentiates ResNetEnergy."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        names = sorted({k.split(".weight")[0][len("param."):] for k in arrays
                        if k.startswith("param.") and k.endswith(".weight")})  # fmt: skip
        self.layers, self.params, self.param_names = {}, [], []
        for name in names:
            layer = {}
            for field in ("weight", "bias", "u", "scale"):
                key = f"param.{name}.{field}"
                if key not in arrays:
                    continue
                a = arrays[key]
                if field == "weight" and a.ndim == 4:  # HWIO -> OIHW, channels-last storage
                    t = torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))
                    t = t.contiguous(memory_format=torch.channels_last)
                elif field == "weight":  # dense (in, out) -> F.linear's (out, in)
                    t = torch.from_numpy(np.ascontiguousarray(a.T))
                else:
                    t = torch.from_numpy(np.ascontiguousarray(a))
                if field != "u":
                    t.requires_grad_(True)
                    self.params.append(t)
                    self.param_names.append(f"{name}.{field}")
                layer[field] = t
            self.layers[name] = layer
        self.temb_input = torch.from_numpy(arrays["temb_input"])
        self.num_stages = 1 + max(int(n[1:].split(".")[0]) for n in names if n.startswith("s"))

    def _kernel(self, name: str) -> torch.Tensor:
        layer = self.layers[name]
        w = _spectral(layer["weight"], layer["u"])
        return w if "scale" not in layer else w * layer["scale"][:, None, None, None]

    def _dense(self, name: str, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[name]
        return F.linear(x, _spectral(layer["weight"], layer["u"]), layer["bias"])

    def context(self) -> tuple[dict, dict, torch.Tensor]:
        """What does not depend on the images: normalized kernels, level biases, read-out
        (computed once per training step, and once per chain under no_grad, as drlx's
        `ResNetEnergy.precompute` and `embed` do)."""
        kernels = {n: self._kernel(n) for n, layer in self.layers.items()
                   if layer["weight"].ndim == 4}  # fmt: skip
        a = _act(self._dense("temb1", _act(self._dense("temb0", self.temb_input))))
        biases = {n: self._dense(n, a)[:, :, None, None] for n in self.layers
                  if n.endswith("temb_proj")}  # fmt: skip
        return kernels, biases, self._dense("readout", a)

    def g(self, y: torch.Tensor, context: tuple[dict, dict, torch.Tensor]) -> torch.Tensor:
        """The network's output on a batch of images, given `context()`."""
        kernels, biases, read = context
        conv = lambda name, x: _conv(x, kernels[name], self.layers[name]["bias"])  # noqa: E731
        h = conv("conv_in", y)
        for s in range(self.num_stages):
            if s > 0:
                h = F.avg_pool2d(h, 2)
            b = 0
            while f"s{s}.b{b}.conv1" in self.layers:
                p = f"s{s}.b{b}."
                r = conv(p + "conv1", _act(h))
                r = conv(p + "conv2", _act(r + biases[p + "temb_proj"]))
                h = r + (conv(p + "shortcut", h) if p + "shortcut" in self.layers else h)
                b += 1
        return (torch.relu(h).sum(dim=(2, 3)) * read).sum(dim=1)

    def energies(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """g of each batch, with one context for all."""
        context = self.context()
        return [self.g(y, context) for y in images]

    def grads(self, y_pos: torch.Tensor, y_neg: torch.Tensor):
        """The training step: mean(g(y-) - g(y+)) and its gradients in every parameter."""
        g_pos, g_neg = self.energies(y_pos, y_neg)
        return torch.autograd.grad(torch.mean(g_neg - g_pos), self.params)

    def max_rel_diff(self, arrays: dict[str, np.ndarray], images: torch.Tensor, term: str):
        """Largest |torch - drlx| / max|drlx| of mean g on `images` (drlx's `value_{term}`)
        and over every parameter's gradient of it (`grad_{term}.*`)."""
        (g,) = self.energies(images)
        value = torch.mean(g)
        grads = torch.autograd.grad(value, self.params)
        worst = 0.0
        for name, grad in zip(self.param_names, grads, strict=True):
            ref = arrays[f"grad_{term}.{name}"]
            got = grad.detach().numpy()
            if got.ndim == 4:  # OIHW -> HWIO
                got = got.transpose(2, 3, 1, 0)
            elif got.ndim == 2:  # (out, in) -> (in, out)
                got = got.T
            worst = max(worst, float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-30)))
        ref_value = float(arrays[f"value_{term}"])
        value_diff = abs(float(value.detach()) - ref_value) / (abs(ref_value) + 1e-30)
        return {"value": value_diff, "grads": worst}


def timed(fn, reps: int) -> dict[str, float]:
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_call_s": warm, "min_s": min(times), "median_s": statistics.median(times)}


def _images(a: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as an NCHW tensor stored channels-last."""
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    return t.contiguous(memory_format=torch.channels_last)


def bench(path: Path, reps: int) -> dict:
    arrays = dict(np.load(path))
    y0, y_neg = _images(arrays["y"]), _images(arrays["y_neg"])
    n = y0.shape[0]

    net = Net(arrays)
    with torch.no_grad():  # a chain's network: fixed kernels, level biases and read-out
        chain_context = net.context()
        g = net.g(y0, chain_context).numpy()
    g_jax = arrays["g"]
    max_rel_diff = float(np.max(np.abs(g - g_jax)) / (np.max(np.abs(g_jax)) + 1e-30))

    s2 = 1e-4
    generator = torch.Generator().manual_seed(0)

    def chain():
        y = y0
        for _ in range(CHAIN_STEPS):
            y = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(net.g(y, chain_context).sum(), y)
            with torch.no_grad():
                noise = torch.randn(y.shape, generator=generator)
                noise = noise.contiguous(memory_format=torch.channels_last)
                y = y + 0.5 * s2 * grad + s2**0.5 * noise
        return y

    diff = {term: net.max_rel_diff(arrays, images, term)
            for term, images in (("pos", y0), ("neg", y_neg))}  # fmt: skip
    if max(v for d in diff.values() for v in d.values()) > TRAIN_TOLERANCE:
        raise SystemExit(f"PyTorch's training step is not drlx's: {diff}")

    def train():
        return net.grads(y0, y_neg)

    sample = timed(chain, reps)
    train_t = timed(train, reps)
    return {
        "batch": n,
        "g_max_rel_diff_vs_jax": max_rel_diff,
        "train_max_rel_diff_vs_jax": diff,
        "sample": {**sample, "sample_steps_per_s": n * CHAIN_STEPS / sample["min_s"],
                   "sample_steps_per_s_median": n * CHAIN_STEPS / sample["median_s"]},
        "train": {**train_t, "examples_per_s": n / train_t["min_s"]},
    }  # fmt: skip


def main() -> None:
    export_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    reps = json.loads((export_dir / "reps.json").read_text())
    results = {}
    for path in sorted(export_dir.glob("*.npz")):
        name = path.stem
        results[name] = bench(path, reps[name])
        r = results[name]
        print(
            f"torch {name:11s} sample {r['sample']['sample_steps_per_s']:8.1f} steps/s | "
            f"train {r['train']['examples_per_s']:7.1f} ex/s | "
            f"g differs from JAX by {r['g_max_rel_diff_vs_jax']:.1e} (relative)",
            flush=True,
        )
    record = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "configs": results,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
