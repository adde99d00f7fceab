"""The PyTorch (CPU build, oneDNN) baseline of benchmarks/bench_network.py, run on this machine.

Reads the networks that bench_network.py exported (the JAX ResNetEnergy's spectrally normalized
weights, the level-dependent biases and read-out vectors, a batch and the JAX network's outputs on
it), rebuilds the same network in PyTorch, checks that it computes the same g as the JAX one,
and times the same two workloads: a 10-step Langevin chain (forward + gradient in the input per
step) and a training step's forward + backward in the weights. Channels-last tensors, eager
mode, torch's default threads (one per core).

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


def _conv(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)


class Net:
    """ResNetEnergy's energy(y, context) with fixed (already normalized) weights."""

    def __init__(self, arrays: dict[str, np.ndarray], requires_grad: bool):
        def param(name):
            a = arrays[name]
            if a.ndim == 4:  # HWIO -> OIHW, stored channels-last like the activations
                t = torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))
                t = t.contiguous(memory_format=torch.channels_last)
            else:
                t = torch.from_numpy(np.ascontiguousarray(a))
            return t.requires_grad_(requires_grad)

        self.conv_in = (param("conv_in.w"), param("conv_in.b"))
        self.stages = []
        s = 0
        while f"s{s}.b0.conv1.w" in arrays:
            blocks, b = [], 0
            while f"s{s}.b{b}.conv1.w" in arrays:
                p = f"s{s}.b{b}."
                has_shortcut = p + "shortcut.w" in arrays
                shortcut = (
                    (param(p + "shortcut.w"), param(p + "shortcut.b")) if has_shortcut else None
                )
                blocks.append(
                    dict(
                        conv1=(param(p + "conv1.w"), param(p + "conv1.b")),
                        conv2=(param(p + "conv2.w"), param(p + "conv2.b")),
                        shortcut=shortcut,
                        level_bias=torch.from_numpy(arrays[p + "level_bias"])[:, :, None, None],
                    )
                )
                b += 1
            self.stages.append(blocks)
            s += 1
        self.read = torch.from_numpy(arrays["read"])
        self.params = [t for t in self._tensors() if t.requires_grad]

    def _tensors(self):
        yield from self.conv_in
        for stage in self.stages:
            for block in stage:
                for key in ("conv1", "conv2", "shortcut"):
                    if block[key] is not None:
                        yield from block[key]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        act = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731
        h = _conv(y, *self.conv_in)
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            for block in stage:
                r = _conv(act(h), *block["conv1"]) + block["level_bias"]
                r = _conv(act(r), *block["conv2"])
                h = r + (h if block["shortcut"] is None else _conv(h, *block["shortcut"]))
        features = torch.relu(h).sum(dim=(2, 3))
        return (features * self.read).sum(dim=1)


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

    sampler_net = Net(arrays, requires_grad=False)
    with torch.no_grad():
        g = sampler_net(y0).numpy()
    g_jax = arrays["g"]
    max_rel_diff = float(np.max(np.abs(g - g_jax)) / (np.max(np.abs(g_jax)) + 1e-30))

    s2 = 1e-4
    generator = torch.Generator().manual_seed(0)

    def chain():
        y = y0
        for _ in range(CHAIN_STEPS):
            y = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(sampler_net(y).sum(), y)
            with torch.no_grad():
                noise = torch.randn(y.shape, generator=generator)
                noise = noise.contiguous(memory_format=torch.channels_last)
                y = y + 0.5 * s2 * grad + s2**0.5 * noise
        return y

    train_net = Net(arrays, requires_grad=True)

    def train():
        loss = torch.mean(train_net(y_neg) - train_net(y0))
        return torch.autograd.grad(loss, train_net.params)

    sample = timed(chain, reps)
    train_t = timed(train, reps)
    return {
        "batch": n,
        "g_max_rel_diff_vs_jax": max_rel_diff,
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
