"""The step-size check (docs/method.md §4.1b): the narrowest target of each level in closed form,
the `conditional` rule, and specs refused or warned about at `sampler.step_size_b2` before
anything trains; the README's spec example is a file that validates and trains to the end."""

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_SPEC, line_of, replace_once, write

import drlx
from drlx.builder import STEP_RATIO_REFUSE, STEP_RATIO_WARN, check_spec
from drlx.diffusion import cosine_logsnr_schedule, drl_linear_schedule
from drlx.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "specs/examples/two_moons.yaml"
MARKER = "<!-- README spec: tests/test_step_sizes.py checks it is specs/examples/two_moons.yaml -->"


def posterior_variance(schedule, t: int, spread: float) -> float:
    """Var(y | x_{t+1}) for data x_0 ~ N(c, spread^2) (per coordinate), from the joint Gaussian
    of (y, x_{t+1}) by the Schur complement; at the top, Var(y) (no tether)."""
    f = lambda v: np.float64(np.asarray(v)[t])  # noqa: E731
    a_out, abar_t = f(schedule.a_out[1:]), f(schedule.abar[:-1])
    sigmabar_t = f(schedule.sigmabar[:-1])
    # y = a_out (abar_t x_0 + sigmabar_t eps); x_{t+1} = y + sigma_{t+1} eps' below the top
    var_y = a_out**2 * (abar_t**2 * spread**2 + sigmabar_t**2)
    if t == schedule.num_levels - 1:
        return var_y
    var_x = var_y + f(schedule.sigma[1:]) ** 2
    return var_y - var_y**2 / var_x


@pytest.mark.parametrize("spread", [0.0, 0.04])
@pytest.mark.parametrize(
    "schedule",
    [drl_linear_schedule(6, 1e-4, 0.02, 1000), cosine_logsnr_schedule(10, -5.1, 9.8)],
    ids=["drl6", "cosine10"],
)
def test_narrowest_target_is_the_gaussian_posterior(schedule, spread):
    got = schedule.narrowest_conditional_variance(spread)
    expected = [posterior_variance(schedule, t, spread) for t in range(schedule.num_levels)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(got[:-1] < np.asarray(schedule.sigma[1:-1], np.float64) ** 2)  # tether's
    # the rule `conditional` takes the fraction b^2 of it at every level
    step_sq = np.asarray(schedule.step_size_sq(0.3, "conditional", spread), np.float64)
    np.testing.assert_allclose(step_sq / got, 0.3, rtol=1e-6)


def test_ula_cannot_be_narrower_than_its_step():
    """The learnability argument: a Gaussian energy of precision P gives ULA with step h the
    stationary variance 1 / (P (1 - hP/4)); over every stable P its minimum is h, at P = 2/h.
    Checked against the empirical variance of a long chain."""
    h = 0.3
    precisions = np.linspace(0.05, 4 / h - 0.05, 2000)
    stationary = 1 / (precisions * (1 - h * precisions / 4))
    assert stationary.min() == pytest.approx(h, rel=1e-4)
    assert precisions[np.argmin(stationary)] == pytest.approx(2 / h, rel=1e-2)
    rng, y, p = np.random.default_rng(0), np.zeros(20000), 2 / h
    for _ in range(200):
        y = y - h * p * y / 2 + np.sqrt(h) * rng.standard_normal(y.shape)
    assert np.var(y) == pytest.approx(h, rel=0.05)


def spec_file(tmp_path: Path, sampler: str) -> Path:
    text = replace_once(FULL_SPEC, "  step_size_b2: 4e-3\n", sampler)
    return write(tmp_path, "s.yaml", text)


def test_conditional_rule_warns_and_refuses_at_the_documented_ratios(tmp_path):
    line = "  step_size_b2: {}\n  step_size_rule: conditional\n"
    quiet = drlx.load_spec(spec_file(tmp_path, line.format(1.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_spec(quiet)  # ratio 1.0 everywhere: nothing said
    warned = drlx.load_spec(spec_file(tmp_path, line.format(1.1)))
    expected = r"s\.yaml:\d+: sampler\.step_size_b2: level \d's Langevin"
    with pytest.warns(UserWarning, match=expected):
        check_spec(warned)
    path = spec_file(tmp_path, line.format(1.3))
    refused = drlx.load_spec(path)
    with pytest.raises(SpecError) as err:
        drlx.build(refused)
    (problem,) = err.value.problems
    at = line_of(path.read_text(), "step_size_b2")
    assert problem.startswith(f"{path}:{at}: sampler.step_size_b2: level ")
    assert "1.30x the narrowest target" in problem
    assert problem.endswith(f"refused from {STEP_RATIO_REFUSE}")
    assert STEP_RATIO_WARN < 1.1 < STEP_RATIO_REFUSE < 1.3


def test_no_shipped_spec_is_refused_or_warned_about():
    specs = sorted((ROOT / "specs").rglob("*.yaml"))
    specs = [p for p in specs if "bases" not in p.parts]
    assert len(specs) >= 12 and EXAMPLE in specs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in specs:
            check_spec(drlx.load_spec(path))


def readme_spec() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r"\n```yaml\n(.*?)```", text, re.S)
    assert match, "the README's spec example (after its marker) is missing"
    return match.group(1)


def test_readme_spec_example_is_the_shipped_file():
    assert readme_spec() == EXAMPLE.read_text()


def test_the_old_readme_example_is_refused_before_training(tmp_path):
    """The README's example before the `conditional` rule: the toy base's DRL step sizes on
    the cosine schedule; it diverged at step 1150. Now `drlx validate` and every stage refuse
    it at the base's step_size_b2, via the extends line, before anything is trained."""
    (tmp_path / "examples").mkdir()
    shutil.copytree(ROOT / "specs/bases", tmp_path / "bases")
    old = re.sub(r"\n# .*\nsampler: .*\n", "\n", EXAMPLE.read_text())
    assert "sampler" not in old and "cosine_logsnr" in old
    path = write(tmp_path / "examples", "two_moons.yaml", old)
    base = tmp_path / "examples/../bases/toy2d.yaml"  # as the loader names it
    done = subprocess.run(
        [Path(sys.executable).parent / "drlx", "validate", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    at = line_of(base.read_text(), "step_size_b2")
    assert done.stdout.startswith(
        f"{base}:{at} (via {path}:1 extends): sampler.step_size_b2: level 8's Langevin step "
        "is 1.46x the narrowest target"
    ), done.stdout


@pytest.mark.slow
def test_readme_spec_example_trains_past_where_it_diverged():
    """1500 steps: the example with the toy base's step sizes diverged at step 1150."""
    spec = drlx.load_spec(EXAMPLE, overrides={"train": {"num_steps": 1500, "log_every": 50}})
    exp = drlx.build(spec)
    state, history = drlx.fit(exp, exp.data.splits(exp.seed)["train"], progress=False)
    assert int(state.step) == 1500 and history[-1]["step"] >= 1450
    assert max(h["chain_max_abs"] for h in history) < 10  # the chains stay near the data
