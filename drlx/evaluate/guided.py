"""Guided and composed generation of a conditional model, measured where the truth is known
(docs/method.md §12): classifier-free guidance on the digits (the share of samples the digits
classifier assigns to the requested class, and the Frechet distance in its features, at each
strength w), and products of experts over conditions (the share of samples inside the target
set: the toy plane's quadrant, the digits' class set)."""

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import numpy as np
from scipy.stats import binomtest

from drlx.data.conditions import Conditioning
from drlx.energy import ConditionalEBM
from drlx.evaluate.digits_features import DigitsClassifier, digits_metrics, features_and_probs
from drlx.experiment import Experiment
from drlx.guidance import classifier_free, compose, requested_classes
from drlx.samplers.many import sample


def share_with_interval(hits: np.ndarray) -> dict:
    """The share of True in `hits` with its Wilson 95% interval (binomial): {"mean", "low",
    "high", "level", "count", "n"}."""
    k, n = int(np.sum(hits)), int(np.size(hits))
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {
        "mean": k / n, "low": float(ci.low), "high": float(ci.high), "level": 0.95,
        "count": k, "n": n,
    }  # fmt: skip


def guided_chain(exp: Experiment, ebm: ConditionalEBM) -> tuple[Experiment, ConditionalEBM]:
    """The experiment and EBMs whose generation runs the spec's guided chain (`tasks.chain`:
    its steps per level, each level's step size s_t^2 times its step scale); both unchanged
    without one."""
    tasks = exp.tasks
    if tasks.chain_steps is None:
        return exp, ebm
    sampler = dataclasses.replace(exp.eval_sampler, num_steps=tasks.chain_steps)
    scaled = eqx.tree_at(lambda e: e.step_sq, ebm, ebm.step_sq * tasks.step_scale)
    return dataclasses.replace(exp, eval_sampler=sampler), scaled


def guidance_sweep(
    exp: Experiment,
    ebm: ConditionalEBM,
    extractor: DigitsClassifier,
    heldout: np.ndarray,
    heldout_b: np.ndarray,
    log: Callable[[str], None] = print,
) -> dict:
    """Classifier-free guidance at every strength of the spec's grid: the share of samples the
    classifier assigns to their requested class (Wilson 95% interval) and the Frechet distance
    in its features over its held-out floor (`digits_metrics`, exp.tasks.num_draws draws).

    Returns:
        {"rows": [{"w", "class_accuracy", "fd_over_floor", "fd_digits_features", ...}], ...}.
    """
    exp, ebm = guided_chain(exp, ebm)
    tasks, cond = exp.tasks, exp.conditioning
    num = tasks.num_samples
    wanted = requested_classes(num, cond.cardinalities[0])
    size = num // tasks.num_draws
    rows, images = [], {}
    for w in tasks.guidance_weights:
        start = time.perf_counter()
        guide = classifier_free(wanted[:, None], cond.null, w)
        samples = sample(exp, ebm, num, guide, "guidance")
        _, probs = features_and_probs(extractor, np.clip(samples, -1.0, 1.0))
        accuracy = share_with_interval(np.argmax(probs, axis=1) == wanted)
        quality = digits_metrics(samples, heldout, heldout_b, extractor, tasks.num_draws, size)
        fd = quality["fd_digits_features"]
        rows.append({
            "w": float(w),
            "class_accuracy": accuracy,
            "fd_over_floor": fd["ratio"],
            "fd_digits_features": fd["model"],
            "fd_floor": fd["floor"],
            "samples_clipped_pixel_share": quality["samples_clipped_pixel_share"],
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        images[float(w)] = samples[:20]
        log(f"guidance w = {w:g}: class accuracy {accuracy['mean']:.3f} "
            f"[{accuracy['low']:.3f}, {accuracy['high']:.3f}], FD/floor "
            f"{fd['ratio']['mean']:.2f} ({rows[-1]['seconds']:.1f} s)")  # fmt: skip
    reached = [r["w"] for r in rows if r["class_accuracy"]["mean"] >= 0.95]
    summary = {
        "num_samples_per_w": num,
        "best_accuracy": max(r["class_accuracy"]["mean"] for r in rows),
        "smallest_w_reaching_0.95": min(reached) if reached else None,
    }
    return {"rows": rows, **summary}, images


def target_hits(conditioning: Conditioning, terms: tuple, values: np.ndarray) -> np.ndarray:
    """Whether each sample lies in a composition's target set, from the samples' own condition
    values (N, M): every slot named by a term of positive weight has the term's value, and no
    term of negative weight holds in all its named slots."""
    null = conditioning.null
    hits = np.ones(len(values), bool)
    for vector, weight in terms:
        vector = np.asarray(vector)
        named = vector != null
        holds = np.all(values[:, named] == vector[named], axis=1)
        hits &= holds if weight > 0 else ~holds
    return hits


def composition_results(
    exp: Experiment,
    ebm: ConditionalEBM,
    judge: Callable[[np.ndarray], np.ndarray],
    log: Callable[[str], None] = print,
) -> tuple[dict, dict]:
    """Sample every composition of the spec and measure the share of samples in its target set.

    Arguments:
        exp, ebm: the conditional experiment and its EBMs.
        judge: samples -> their condition values (N, M) (the toys' attributes from the points;
            the digits' from the classifier's class).

    Returns:
        ({name: {"share_in_target", "terms", "seconds"}}, {name: samples}).
    """
    exp, ebm = guided_chain(exp, ebm)
    cond = exp.conditioning
    out, samples_of = {}, {}
    for name, terms in exp.tasks.compositions:
        start = time.perf_counter()
        vectors, weights = zip(*terms, strict=True)
        guide = compose(vectors, weights, cond.null, exp.tasks.num_samples)
        samples = sample(exp, ebm, exp.tasks.num_samples, guide, f"compose-{name}")
        values = judge(samples)
        share = share_with_interval(target_hits(cond, terms, values))
        out[name] = {
            "share_in_target": share,
            "terms": [
                {"condition": dict(zip(cond.names, map(int, v), strict=True)), "weight": w}
                for v, w in terms
            ],
            "value_shares": {
                f"{slot}={value}": float(np.mean(values[:, m] == value))
                for m, slot in enumerate(cond.names)
                for value in range(cond.cardinalities[m])
            },
            "seconds": time.perf_counter() - start,
        }
        samples_of[name] = samples
        lo, hi = share["low"], share["high"]
        seconds = out[name]["seconds"]
        log(
            f"composition {name}: {share['mean']:.3f} in target [{lo:.3f}, {hi:.3f}] "
            f"({seconds:.1f} s)"
        )
    return out, samples_of
