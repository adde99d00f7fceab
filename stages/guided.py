"""Stage: guided and composed generation of a conditional model (docs/method.md §12), the
spec's `tasks:` block. Classifier-free guidance over its grid of strengths w (digits: the share
of samples the digits classifier assigns to the requested class, and the Frechet distance in
its features over the held-out floor, per w) and its compositions (the share of samples inside
each target set: the toy plane's quadrant from the points, the digits' class set from the
classifier's class)."""

import time

import numpy as np
from common import input_checks, load_experiment, parser, run_stage

from drlx.errors import InputError
from drlx.evaluate.digits_features import (
    ARRAY_NAMES,
    class_shares,
    classifier_from_arrays,
    features_and_probs,
)
from drlx.evaluate.guided import composition_results, guidance_sweep
from drlx.evaluate.plots import compositions_figure, guidance_figure
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--features", help="digits: the classifier from the features stage (.npz)")
    p.add_argument("--metrics", required=True, help="output: guidance and composition numbers")
    p.add_argument("--plot", required=True, help="output: guidance (else composition) figure")
    p.add_argument("--compose-plot", help="output: composition figure, for a spec with both")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    if exp.tasks is None:
        raise InputError(f"{args.spec}: no `tasks:` block: nothing to guide or compose")
    digits = exp.data.kind == "digits"
    if digits != (args.features is not None):
        raise InputError("--features (the digits classifier) is needed for digits specs only")
    data = read_arrays(args.data, "heldout", "heldout_b")
    ebm = exp.ebm(*exp.load_model(args.model))
    cond = exp.conditioning
    start = time.perf_counter()
    metrics = {"experiment": exp.name, "spec_hash": exp.scientific_hash}
    if digits:
        with input_checks(KeyError, ValueError):
            extractor = classifier_from_arrays(
                read_arrays(args.features, *ARRAY_NAMES), args.features
            )

        judged = []  # the class probabilities of each judged sample set, in order

        def judge(samples: np.ndarray) -> np.ndarray:
            _, probs = features_and_probs(extractor, np.clip(samples, -1.0, 1.0))
            judged.append(probs)
            classes = np.argmax(probs, axis=1)
            return cond.values({"samples_labels": classes}, "samples")
    else:

        def judge(samples: np.ndarray) -> np.ndarray:
            return cond.values({"samples": samples}, "samples")

    title = f"{exp.name}: "
    if exp.tasks.guidance_weights:
        if not digits:
            raise InputError(f"{args.spec}: guidance is measured on the digits only")
        metrics["guidance"], images = guidance_sweep(
            exp, ebm, extractor, data["heldout"], data["heldout_b"]
        )
        guidance_figure(args.plot, metrics["guidance"]["rows"], images, title + "guidance")
    if exp.tasks.compositions:
        metrics["compositions"], samples = composition_results(exp, ebm, judge)
        if digits:  # the class shares behind each share in target (judged in this order)
            for name, probs in zip(samples, judged, strict=True):
                metrics["compositions"][name]["class_shares"] = class_shares(probs).tolist()
        shares = {n: m["share_in_target"]["mean"] for n, m in metrics["compositions"].items()}
        plot = args.compose_plot if exp.tasks.guidance_weights else args.plot
        if plot is None:
            raise InputError("a spec with guidance and compositions needs --compose-plot")
        compositions_figure(plot, samples, shares, data["heldout"], title + "compositions")
    metrics["wall_time_s"] = time.perf_counter() - start
    write_json(args.metrics, metrics)
    print(f"guided: {metrics['wall_time_s']:.1f} s")


if __name__ == "__main__":
    run_stage(main)
