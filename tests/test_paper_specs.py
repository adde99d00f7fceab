"""Paper specs validate and train for two iterations on synthetic data in the real file formats
(a class-conditional one with its labels, then sampled with classifier-free guidance); an .npz
dataset trains from a spec alone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import BATCHES, cifar_records, fast_compile_env, write_imagenet32, write_tar
from PIL import Image

from drlx.builder import build, build_data
from drlx.guidance import classifier_free
from drlx.samplers.many import sample_many
from drlx.spec import ExperimentSpec, load_raw
from drlx.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
# Small enough for a CPU test; everything else (schedule, kinds, structure) as in the spec.
SHRINK = {
    "model": {"width": 8, "blocks_per_resolution": 1, "embed_dim": 16},
    "sampler": {"num_steps": 2},
    "train": {"num_steps": 2, "batch_size": 4, "warmup_steps": 1},
    "runtime": {"progress": False},
}


def _synthetic_data(kind: str, tmp: Path) -> dict:
    if kind == "cifar10":
        members = {name: cifar_records(12, i)[0] for i, name in enumerate(BATCHES)}
        return {"path": str(write_tar(tmp / "cifar-10-binary.tar.gz", members))}
    if kind == "imagenet32":  # 10 train batches of 2 images, 4 validation images
        write_imagenet32(tmp / "imagenet32", rows=2, val_rows=4)
        return {"path": str(tmp / "imagenet32")}
    folder = tmp / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):  # JPEGs of several sizes, as CelebA/LSUN folders hold
        size = (int(rng.integers(70, 120)), int(rng.integers(70, 120)))
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")
    return {"path": str(folder), "num_heldout": 4}


def _merge(raw: dict, over: dict) -> dict:
    out = dict(raw)
    for key, value in over.items():
        out[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return out


# CDRL's U-Net initializer, shrunk the same way (its structure: resolutions, attention, kept)
SHRINK_INITIALIZER = {"width": 8, "num_res_blocks": 1, "groups": 4}
PAPER_SPECS = [
    "cifar10_t6", "cifar10_t1000", "celeba64", "lsun_church64", "cifar10_cdrl", "imagenet32_cdrl"
]  # fmt: skip


def _two_iterations(raw: dict) -> dict:
    """Train a spec two iterations and generate from it (with classifier-free guidance for a
    class-conditional one); what the test checks, as JSON. Run in a subprocess of its own
    (`__main__` below), where XLA compiles without LLVM's optimisation (tests/helpers.py):
    compiling is most of these runs."""
    spec = ExperimentSpec.model_validate(raw)
    exp = build(spec)
    arrays = build_data(spec.data).splits(spec.seed)
    cond = exp.conditioning
    conditions = None if cond is None else cond.values(arrays, "train")
    state, history = fit(exp, arrays["train"], progress=False, conditions=conditions)
    found = {
        "train_shape": list(arrays["train"].shape[1:]),
        "train_dtype": str(arrays["train"].dtype),
        "shape": list(exp.shape),
        "conditional": cond is not None,
        "step": int(state.step),
        "last": {k: float(v) for k, v in history[-1].items() if k.endswith("loss")},
    }
    if spec.diffusion.num_levels <= 6:  # T1000 generation is 1000 levels long; skip it here
        ebm = exp.ebm(state.ema, state.initializer_ema)
        guide = None
        if cond is not None:  # classes 0 and 999 at the paper's guidance strength
            classes = np.asarray([[0], [cond.cardinalities[0] - 1]], np.int32)
            guide = classifier_free(classes, cond.null, 0.7)
        x = sample_many(ebm, exp.eval_sampler, exp.key("s"), 2, exp.shape, 2, progress=False,
                        tweedie=exp.tweedie, guide=guide)  # fmt: skip
        found["samples_shape"] = list(x.shape)
        found["samples_finite"] = bool(np.all(np.isfinite(x)))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_SPECS)
def test_paper_spec_runs_two_iterations(name: str, tmp_path: Path):
    raw, _ = load_raw(ROOT / "specs" / f"{name}.yaml")
    paper = ExperimentSpec.model_validate(raw)  # the spec as written is valid
    data_over = _synthetic_data(paper.data.kind, tmp_path)
    over = {**SHRINK, "data": data_over}
    if paper.initializer is not None:
        over["initializer"] = SHRINK_INITIALIZER
    shrunk = _merge(raw, over)
    spec = ExperimentSpec.model_validate(shrunk)
    assert spec.diffusion == paper.diffusion and spec.objective == paper.objective
    (tmp_path / "spec.json").write_text(json.dumps(shrunk))
    cmd = [sys.executable, __file__, str(tmp_path / "spec.json"), str(tmp_path / "found.json")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=fast_compile_env())
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["train_shape"] == found["shape"] and found["train_dtype"] == "float32"
    assert found["conditional"] == (paper.condition is not None)
    assert found["step"] == 2 and np.isfinite(found["last"]["loss"])
    if paper.initializer is not None:
        assert np.isfinite(found["last"]["initializer_loss"])
    if spec.diffusion.num_levels <= 6:
        assert found["samples_shape"] == [2, *found["shape"]] and found["samples_finite"]


@pytest.mark.slow
def test_npz_dataset_trains_from_a_spec_alone(tmp_path: Path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "mine.npz", images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        f"extends: {ROOT / 'specs/bases/drl_image.yaml'}\n"
        "name: mine\n"
        f"data: {{kind: npz, path: {tmp_path / 'mine.npz'}, shape: [8, 8, 3], num_heldout: 4}}\n"
        "model: {width: 8, blocks_per_resolution: 1, channel_mults: [1, 2], embed_dim: 16}\n"
        "sampler: {num_steps: 2}\n"
        "train: {num_steps: 3, batch_size: 8, warmup_steps: 1}\n"
        "evaluate: {num_samples: 4}\n"
        "runtime: {progress: false, sample_batch_size: 4}\n"
    )
    out = tmp_path / "run"
    py = sys.executable
    common = ["--spec", str(spec), "--data", str(out / "data.npz")]
    steps = [
        [py, "stages/prepare.py", "--spec", str(spec), "--out", str(out / "data.npz")],
        [py, "stages/train.py", *common, "--model", str(out / "model.eqx"), "--history",
         str(out / "h.json"), "--plot", str(out / "loss.png"), "--checkpoints", str(out / "ck")],
        [py, "stages/sample.py", *common, "--model", str(out / "model.eqx"), "--out",
         str(out / "samples.npz"), "--plot", str(out / "samples.png")],
    ]  # fmt: skip
    for cmd in steps:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=fast_compile_env())
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (4, 8, 8, 3) and np.all(np.isfinite(samples))
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"


if __name__ == "__main__":  # test_paper_spec_runs_two_iterations's subprocess
    spec_file, out_file = sys.argv[1:]
    found = _two_iterations(json.loads(Path(spec_file).read_text()))
    Path(out_file).write_text(json.dumps(found))
