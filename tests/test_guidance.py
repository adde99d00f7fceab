"""Conditioning, classifier-free guidance and composition (docs/method.md §12) against closed
forms: with Gaussian conditionals f(y | c) = N(m_c, v I) a guided or composed target
sum_j w_j f(y | c_j) (sum_j w_j = 1) is N(sum_j w_j m_j, v I), and with the tether the
conditional p(y | x~) has precision P = 1/v + 1/sigma^2 and mean (m_w / v + x~ / sigma^2) / P."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AbstractFixedNetwork, tiny_toy_spec
from jaxtyping import Array

from drlx.builder import build
from drlx.cooperative import Proposal
from drlx.data.conditions import DIGIT_ATTRIBUTES, TOY_ATTRIBUTES, Conditioning, classes_with
from drlx.diffusion import drl_linear_schedule
from drlx.energy import ConditionalEBM
from drlx.evaluate.guided import target_hits
from drlx.guidance import classifier_free, compose, plain
from drlx.keys import example_keys
from drlx.models.initializer import MLPInitializer
from drlx.models.layers import with_random_tables
from drlx.models.mlp import MLPEnergy
from drlx.samplers.mala import MALA
from drlx.samplers.progressive import recover
from drlx.spec import SpecError, load_spec
from drlx.train.step import drop_conditions

VAR = 0.3
# the means of class 0, class 1 and the null token (row 2)
MEANS = np.array([[0.5, -0.25], [-0.4, 0.3], [0.05, 0.1]])


class ConditionalQuadratic(AbstractFixedNetwork):
    """g(y, t, c) = -||y - m_c||^2 / (2 v): level-free Gaussians whose mean depends on a
    one-slot condition (the last row of `means` is the null token's)."""

    means: Array

    def embed(self, t, c=None):
        if c is None:
            c = jnp.full((t.shape[0], 1), self.means.shape[0] - 1, jnp.int32)
        return (self.means[c[:, 0]],)

    def energy(self, y, context):
        (m,) = context
        return -jnp.sum((y - m) ** 2, axis=-1) / (2.0 * VAR)


@pytest.fixture(scope="module")
def schedule():
    return drl_linear_schedule(6, 1e-4, 0.02, 1000)


def gaussian_ebm(schedule, step_sq=1.0, proposal=None):
    T = schedule.num_levels
    net = ConditionalQuadratic(jnp.asarray(MEANS, jnp.float32))
    return ConditionalEBM(net, schedule, jnp.full(T, step_sq), jnp.ones(T), proposal)


def closed_form(schedule, m, x_tilde, level):
    """Mean and variance of the tethered Gaussian conditional with data mean m."""
    sig2 = float(schedule.sigma[level + 1]) ** 2
    precision = 1 / VAR + 1 / sig2
    return (m / VAR + np.asarray(x_tilde, np.float64) / sig2) / precision, 1 / precision


@pytest.mark.parametrize("w", [0.0, 0.7, 3.0])
def test_guided_log_density_is_the_weighted_gaussian(schedule, w, key):
    """(1 + w) f(y | c) - w f(y | null) is the Gaussian of mean (1 + w) m_c - w m_null: the
    guided log p(y | x~) differs between two points y, y' exactly as that Gaussian's, and its
    gradient is the closed form's."""
    n, level = 16, 2
    c = np.arange(n)[:, None] % 2
    guide = classifier_free(c, np.array([2]), w)
    ebm = gaussian_ebm(schedule)
    x_tilde = jax.random.normal(key, (n, 2))
    t = jnp.full(n, level, jnp.int32)
    y, y2 = jax.random.normal(jax.random.fold_in(key, 1), (2, n, 2))
    m = (1 + w) * MEANS[c[:, 0]] - w * MEANS[2]
    mu, var = closed_form(schedule, m, x_tilde, level)
    logp = lambda z: -np.sum((np.asarray(z, np.float64) - mu) ** 2, axis=1) / (2 * var)  # noqa: E731
    got = np.asarray(ebm.log_prob(y, x_tilde, t, guide) - ebm.log_prob(y2, x_tilde, t, guide))
    np.testing.assert_allclose(got, logp(y) - logp(y2), rtol=2e-4, atol=2e-4)
    _, grad = ebm.target(x_tilde, t, guide)(y)
    np.testing.assert_allclose(np.asarray(grad), -(np.asarray(y) - mu) / var, rtol=1e-4, atol=1e-4)


def test_composition_is_the_product_of_experts(schedule, key):
    """Weights (1, 1) on classes 0 and 1 and -1 on null: the mean m_0 + m_1 - m_null; a negated
    class (-1 on class 1, 2 on null): 2 m_null - m_1."""
    n, level = 8, 1
    ebm = gaussian_ebm(schedule)
    x_tilde = jax.random.normal(key, (n, 2))
    t = jnp.full(n, level, jnp.int32)
    for conds, weights, m in (
        ([[0], [1]], [1.0, 1.0], MEANS[0] + MEANS[1] - MEANS[2]),
        ([[1]], [-1.0], 2 * MEANS[2] - MEANS[1]),
    ):
        guide = compose([np.array(c) for c in conds], weights, np.array([2]), n)
        np.testing.assert_allclose(float(jnp.sum(guide.weights)), 1.0, atol=1e-6)
        mu, var = closed_form(schedule, m, x_tilde, level)
        _, grad = ebm.target(x_tilde, t, guide)(mu.astype(np.float32))
        np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-4)  # the mode is mu
    with pytest.raises(ValueError, match="sum to 1"):
        compose([np.array([0])], [np.nan], np.array([2]), n)


def test_guided_chains_sample_the_guided_gaussian(schedule, key):
    """MALA on the guided target (w = 2, class 0), started at the tether: mean and variance
    of the output within 5 standard errors of the closed form; the unguided chains are not."""
    n, level, w = 8192, 2, 2.0
    sig2 = float(schedule.sigma[level + 1]) ** 2
    step = 0.5 / (1 / VAR + 1 / sig2)
    ebm = gaussian_ebm(schedule, step)
    x_tilde = jnp.tile(jnp.asarray([[0.2, -0.4]]), (n, 1))
    t = jnp.full(n, level, jnp.int32)
    c = np.zeros((n, 1), np.int32)
    x = recover(ebm, MALA(60), x_tilde, t, example_keys(key, n), classifier_free(c, [2], w))
    y = np.asarray(x, np.float64) * float(schedule.a_out[level + 1])
    m = (1 + w) * MEANS[0] - w * MEANS[2]
    mu, var = closed_form(schedule, m, np.array([[0.2, -0.4]]), level)
    assert np.all(np.abs(y.mean(0) - mu[0]) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(y.var(0) - var) < 5 * var * np.sqrt(2 / (n - 1)))
    plain_x = recover(ebm, MALA(60), x_tilde, t, example_keys(key, n), plain(c))
    plain_mu, _ = closed_form(schedule, MEANS[0], np.array([[0.2, -0.4]]), level)
    y_plain = np.asarray(plain_x, np.float64) * float(schedule.a_out[level + 1])
    assert np.all(np.abs(y_plain.mean(0) - plain_mu[0]) < 5 * np.sqrt(var / n))
    assert np.abs(y_plain.mean(0) - mu[0]).max() > 0.05


def conditional_initializer(key, cards=(3, 2)):
    init = MLPInitializer(4, 16, 2, 8, "silu", jnp.arange(6.0), key=key, cardinalities=cards)
    # a non-zero output layer and tables, so that the mean depends on the condition
    init = eqx.tree_at(lambda m: m.out.weight, init, 0.3 * jax.random.normal(key, (16, 4)))
    return with_random_tables(init, 1.0, key)


def test_guided_initializer_mean(key):
    """The proposal's guided mean is (1 + w) mu(c) - w mu(null), computed by separate calls."""
    init = conditional_initializer(key)
    n, w = 5, 0.7
    x = jax.random.normal(key, (n, 4))
    t = jnp.arange(n) % 6
    c = jnp.asarray(np.stack([np.arange(n) % 3, np.arange(n) % 2], 1), jnp.int32)
    null = np.array([3, 2])
    proposal = Proposal(init, jnp.ones(6))
    want = (1 + w) * init.mean(x, t, c=c) - w * init.mean(x, t, c=jnp.tile(null, (n, 1)))
    got = proposal.mean(x, t, guide=classifier_free(c, null, w))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(init.mean(x, t, c=c) - init.mean(x, t))).max() > 1e-3


def test_condition_embedding_null_and_refusal(key):
    """A conditional network starts as its unconditional one (zero tables) and reads c = None as
    the all-null condition; an unconditional one refuses a condition; adding the condition
    leaves every other weight as it was."""
    args = (2, 16, 2, 8, "silu", 0, 1.0, key)
    fresh = MLPEnergy(*args, cardinalities=(2, 2))
    base = MLPEnergy(*args)
    t0 = jnp.arange(4) % 3
    c0 = jnp.zeros((4, 2), jnp.int32)
    np.testing.assert_array_equal(np.asarray(fresh.embed(t0, c0)[0]), np.asarray(base.embed(t0)[0]))
    net = with_random_tables(fresh, 1.0, key)
    assert (
        with_random_tables(base, 1.0, key) is base and with_random_tables(fresh, 0.0, key) is fresh
    )
    y, t = jax.random.normal(key, (4, 2)), jnp.arange(4) % 3
    null = jnp.full((4, 2), 2, jnp.int32)
    np.testing.assert_array_equal(np.asarray(net.embed(t)[0]), np.asarray(net.embed(t, null)[0]))
    assert np.abs(np.asarray(net.embed(t, null * 0)[0] - net.embed(t)[0])).max() > 1e-3
    with pytest.raises(ValueError, match="unconditional network"):
        base.embed(t, null)
    same = eqx.tree_at(lambda m: m.condition, net, None, is_leaf=lambda x: x is None)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert base(y, t).shape == (4,)


def test_drop_conditions_rates(key):
    """Each entry becomes null with probability p, independently of the other slot."""
    n, p = 20000, 0.3
    c = jnp.zeros((n, 2), jnp.int32)
    dropped = np.asarray(drop_conditions(c, jnp.array([5, 2]), p, example_keys(key, n)))
    is_null = dropped == np.array([5, 2])
    assert np.all((dropped == 0) | is_null)
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(is_null.mean(0) - p) < 5 * se)
    both = np.mean(is_null.all(1))
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)
    kept = drop_conditions(c, jnp.array([5, 2]), 0.0, example_keys(key, n))
    np.testing.assert_array_equal(np.asarray(kept), 0)


def test_attributes_and_target_sets():
    """Digit attributes from the class, toy attributes from the point, and the target set of a
    composition (AND, NOT) against enumeration."""
    cond = Conditioning("attributes", ("even", "at_least_5", "has_loop"), (2, 2, 2), 0.5, "digits")
    labels = np.arange(10)
    values = cond.values({"s_labels": labels}, "s")
    assert [c for c in labels if values[c, 0]] == [0, 2, 4, 6, 8]
    assert [c for c in labels if values[c, 1]] == [5, 6, 7, 8, 9]
    assert [c for c in labels if values[c, 2]] == [0, 6, 8, 9]
    assert set(DIGIT_ATTRIBUTES) == {"even", "at_least_5", "has_loop"}
    both = ((tuple(cond.parse({"even": 1})), 1.0), (tuple(cond.parse({"at_least_5": 1})), 1.0))
    assert (
        list(labels[target_hits(cond, both, values)])
        == [6, 8]
        == classes_with({"even": 1, "at_least_5": 1})
    )
    negated = ((tuple(cond.parse({"has_loop": 1})), -1.0),)
    assert list(labels[target_hits(cond, negated, values)]) == [1, 2, 3, 4, 5, 7]
    toy = Conditioning("attributes", ("right_half", "upper_half"), (2, 2), 0.5, "toy2d")
    pts = np.array([[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]])
    np.testing.assert_array_equal(toy.values({"p": pts}, "p"), [[1, 1], [0, 1], [1, 0], [0, 0]])
    quadrant = (
        (tuple(toy.parse({"right_half": 1})), 1.0),
        (tuple(toy.parse({"upper_half": 1})), 1.0),
    )
    np.testing.assert_array_equal(
        target_hits(toy, quadrant, toy.values({"p": pts}, "p")), [1, 0, 0, 0]
    )
    assert set(TOY_ATTRIBUTES) == {"right_half", "upper_half"}


def test_spec_checks_are_located(tmp_path):
    """Conditioning problems are refused at the spec's line, and unconditional specs keep their
    hashes (the new blocks are absent from the dump when unset)."""
    cond = {"on": "attributes", "attributes": ["even"]}
    spec = load_spec(tiny_toy_spec(tmp_path / "a.yaml", "a", condition=cond))
    with pytest.raises(SpecError, match=r"a.yaml:\d+: condition.attributes: \['even'\] cannot"):
        build(spec)
    spec = load_spec(tiny_toy_spec(tmp_path / "b.yaml", "b", condition={"on": "class"}))
    with pytest.raises(SpecError, match=r"b.yaml:\d+: condition.on: class, but the 'toy2d'"):
        build(spec)
    spec = load_spec(tiny_toy_spec(tmp_path / "c.yaml", "c", tasks={"guidance_weights": [1.0]}))
    with pytest.raises(SpecError, match=r"c.yaml:\d+: tasks: guided and composed generation"):
        build(spec)
    terms = [{"condition": {"left_half": 1}, "weight": 1.0}]
    spec = load_spec(tiny_toy_spec(
        tmp_path / "d.yaml", "d",
        condition={"on": "attributes", "attributes": ["right_half"]},
        tasks={"compositions": [{"name": "x", "terms": terms}]},
    ))  # fmt: skip
    with pytest.raises(SpecError, match=r"d.yaml:\d+: tasks.compositions.0.terms.0.condition: "):
        build(spec)
    plain_spec = load_spec(tiny_toy_spec(tmp_path / "e.yaml", "e"))
    assert "condition" not in plain_spec.scientific_dict()
    assert "tasks" not in plain_spec.scientific_dict()
    conditional = load_spec(
        tiny_toy_spec(
            tmp_path / "f.yaml", "e", condition={"on": "attributes", "attributes": ["right_half"]}
        )
    )
    assert conditional.scientific_hash() != plain_spec.scientific_hash()


def test_batches_carry_their_own_conditions():
    """Each example's condition travels with it through shuffling, flips and resumption: the
    conditions are the rows' indices, and every batch's images are the array's rows at them."""
    from drlx.data.pipeline import batch_iterator

    x = np.arange(40 * 2 * 2, dtype=np.float32).reshape(40, 2, 2, 1)
    index = np.arange(40, dtype=np.int32)[:, None]
    it = batch_iterator(x, 8, seed=1, flip=True, conditions=index)
    for _ in range(12):
        images, conds = next(it)
        rows = x[conds[:, 0]]
        same = np.all(images == rows, axis=(1, 2, 3)) | np.all(
            images == rows[:, :, ::-1], (1, 2, 3)
        )
        assert same.all() and len(np.unique(conds)) == 8
    state = it.get_state()
    after = next(it)
    resumed = batch_iterator(x, 8, seed=1, flip=True, conditions=index)
    resumed.set_state(state)
    again = next(resumed)
    np.testing.assert_array_equal(after[0], again[0])
    np.testing.assert_array_equal(after[1], again[1])
    with pytest.raises(ValueError, match="conditions for"):
        batch_iterator(x, 8, seed=1, conditions=index[:10])


def test_conditional_training_and_composition_end_to_end(tmp_path):
    """A tiny attribute-conditional CDRL toy trains (conditions in the batches), and the
    composition's reported share in the target set is the share recomputed from its samples."""
    from drlx.evaluate.guided import composition_results
    from drlx.train.fit import fit

    terms = [{"condition": {"right_half": 1}, "weight": 2.0}]
    path = tiny_toy_spec(
        tmp_path / "c.yaml", "cond",
        condition={"on": "attributes", "attributes": ["right_half", "upper_half"], "p_uncond": 0.5},
        tasks={"compositions": [{"name": "right", "terms": terms}], "num_samples": 64},
        initializer={"kind": "mlp", "width": 16, "depth": 1, "learning_rate": 1e-3},
        train={"num_steps": 20, "batch_size": 64}, sampler={"num_steps": 3},
    )  # fmt: skip
    exp = build(load_spec(path))
    arrays = exp.data.splits(exp.seed)
    with pytest.raises(ValueError, match="needs its training conditions"):
        fit(exp, arrays["train"], progress=False)
    state, history = fit(
        exp, arrays["train"], progress=False, conditions=exp.conditioning.values(arrays, "train")
    )
    assert int(state.step) == 20 and np.isfinite(history[-1]["loss"])
    ebm = exp.ebm(state.ema, state.initializer_ema)
    judge = lambda s: exp.conditioning.values({"s": s}, "s")  # noqa: E731
    out, samples = composition_results(exp, ebm, judge, log=lambda _: None)
    assert samples["right"].shape == (64, 2)
    assert out["right"]["share_in_target"]["mean"] == np.mean(samples["right"][:, 0] > 0)


def test_readme_tasks_example_builds(tmp_path):
    """The README's condition/tasks fragment, pasted into specs/digits.yaml, validates and
    builds (and its commented class-conditional variant too)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    marker = "<!-- README tasks: tests/test_guidance.py builds it over specs/digits.yaml -->"
    match = re.search(re.escape(marker) + r"\n```yaml\n(.*?)```", text, re.S)
    assert match, "the README's tasks example (after its marker) is missing"
    block = match.group(1)
    base = str(root / "specs/bases/drl_image.yaml")
    digits = (root / "specs/digits.yaml").read_text().replace("bases/drl_image.yaml", base)
    commented = "\n".join(
        line[2:] for line in block.splitlines() if line.startswith(("# condition:", "# tasks:"))
    )
    spec = tmp_path / "pasted.yaml"
    spec.write_text(digits + "\n" + block)
    exp = build(load_spec(spec))
    assert exp.conditioning.names == ("even", "at_least_5") and len(exp.tasks.compositions) == 1
    assert (exp.tasks.chain_steps, exp.tasks.step_scale) == (40, 0.25)
    spec.write_text(digits + "\n" + commented + "\n")
    exp = build(load_spec(spec))
    assert exp.conditioning.on == "class" and exp.tasks.guidance_weights == (0.0, 0.5, 1.0, 2.0)


def test_guided_chain_runs_the_tasks_steps_and_step_scale(tmp_path, monkeypatch):
    """`tasks.chain` sets the steps per level and scales every level's step size of guided and
    composed chains (and nothing else); a step scale above 1 is refused at its line."""
    import drlx.evaluate.guided as guided

    terms = [{"condition": {"right_half": 1}, "weight": 2.0}]
    tasks = {"compositions": [{"name": "right", "terms": terms}], "num_samples": 8}
    condition = {"on": "attributes", "attributes": ["right_half"], "p_uncond": 0.5}
    plain_exp = build(load_spec(tiny_toy_spec(
        tmp_path / "a.yaml", "a", condition=condition, tasks=tasks, sampler={"num_steps": 3}
    )))  # fmt: skip
    chained = {**tasks, "chain": {"num_steps": 7, "step_scale": 0.25}}
    exp = build(load_spec(tiny_toy_spec(
        tmp_path / "b.yaml", "b", condition=condition, tasks=chained, sampler={"num_steps": 3}
    )))  # fmt: skip
    ebm = exp.ebm(exp.init_network())
    same_exp, same_ebm = guided.guided_chain(plain_exp, ebm)
    assert same_exp is plain_exp and same_ebm is ebm
    seen = []
    monkeypatch.setattr(
        guided, "sample", lambda e, m, num, *a: seen.append((e, m)) or np.zeros((num, 2))
    )
    guided.composition_results(exp, ebm, lambda s: np.zeros((len(s), 1), int), log=print)
    ((used_exp, used_ebm),) = seen
    assert used_exp.eval_sampler.num_steps == 7 and exp.eval_sampler.num_steps == 3
    np.testing.assert_allclose(used_ebm.step_sq, 0.25 * np.asarray(ebm.step_sq), rtol=1e-7)
    assert type(used_exp.eval_sampler) is type(exp.eval_sampler)
    # a tasks block without a chain keeps the hash it had before `chain` existed
    plain_spec = load_spec(tmp_path / "a.yaml")
    assert "chain" not in plain_spec.scientific_dict()["tasks"]
    assert load_spec(tmp_path / "b.yaml").scientific_dict()["tasks"]["chain"]["num_steps"] == 7
    bad = {**tasks, "chain": {"num_steps": 7, "step_scale": 2.0}}
    with pytest.raises(SpecError, match=r"c.yaml:\d+: tasks.chain.step_scale"):
        load_spec(tiny_toy_spec(tmp_path / "c.yaml", "c", condition=condition, tasks=bad))
