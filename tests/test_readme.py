"""The README's notebook example runs as shown, and trains a model whose samples beat noise."""

import re
import shutil
from pathlib import Path

import numpy as np

from drlx.evaluate.toy_metrics import sliced_wasserstein

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- README example: tests/test_readme.py runs this block -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r"\n```python\n(.*?)```", text, re.S)
    assert match, "the README's notebook example (after its marker) is missing"
    return match.group(1)


def test_readme_notebook_example(tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    samples, data = namespace["samples"], namespace["data"]
    assert samples.shape == (2000, 2) and np.all(np.isfinite(samples))
    heldout, heldout_b = data["heldout"][:2000], data["heldout_b"][:2000]
    noise = np.random.default_rng(0).standard_normal((2000, 2)).astype(np.float32)
    floor = sliced_wasserstein(heldout_b, heldout, 128)
    model = sliced_wasserstein(samples, heldout, 128)
    assert model < 3 * floor < sliced_wasserstein(noise, heldout, 128), (model, floor)
