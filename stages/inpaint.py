"""Digits only: inpainting. Held-out digits with four masks (right half, bottom half, centre
square, half of the pixels at random) are completed by the trained EBM, only the hidden pixels
moving (docs/method.md §7.8); the digits classifier's accuracy on the completions against the
true labels, the error on the hidden pixels against two baselines (the training mean image and
the nearest training image on the visible pixels), with 95% intervals, and a picture (masked
input | completions | truth)."""

import time

import numpy as np
from common import input_checks, load_experiment, parser, run_stage

from drlx.evaluate.digits_features import (
    ARRAY_NAMES,
    classifier_from_arrays,
    features_and_probs,
    require_digits,
)
from drlx.evaluate.inpaint import InpaintSettings, evaluate_inpainting, inpainting_figure
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--features", required=True, help="classifier (.npz) from the features stage")
    p.add_argument("--metrics", required=True, help="output: accuracy and errors per mask (JSON)")
    p.add_argument("--plot", required=True, help="output: masked input | completions | truth (PNG)")
    defaults = InpaintSettings()
    p.add_argument("--num-examples", type=int, default=defaults.num_examples,
                   help="held-out digits inpainted (the first of the split)")  # fmt: skip
    p.add_argument("--num-completions", type=int, default=defaults.num_completions,
                   help="completions of each digit and mask")  # fmt: skip
    p.add_argument("--resample", type=int, default=defaults.resample,
                   help="Gibbs sweeps per swept level (1: plain replacement)")  # fmt: skip
    p.add_argument("--resample-levels", type=int, default=defaults.resample_levels,
                   help="sweep levels t < this (default: every level below the top)")  # fmt: skip
    args = p.parse_args()
    exp = load_experiment(args.spec)
    with input_checks(ValueError):
        require_digits(exp.data, args.spec, "the inpaint stage")
        if min(args.num_examples - 1, args.num_completions, args.resample) < 1:
            raise ValueError(
                "--num-examples must be at least 2, --num-completions and --resample at least 1"
            )
    data = read_arrays(args.data, "train", "heldout", "heldout_labels")
    arrays = read_arrays(args.features, *ARRAY_NAMES)
    with input_checks(KeyError, ValueError):  # an extractor of another shape
        classifier = classifier_from_arrays(arrays, args.features)
    ebm = exp.ebm(*exp.load_model(args.model))
    settings = defaults._replace(
        num_examples=args.num_examples, num_completions=args.num_completions,
        resample=args.resample, resample_levels=args.resample_levels,
    )  # fmt: skip

    def classify(images: np.ndarray) -> np.ndarray:
        return np.argmax(features_and_probs(classifier, images)[1], axis=1)

    start = time.perf_counter()
    metrics, rows = evaluate_inpainting(exp, ebm, data, classify, settings, log=print)
    metrics = {"experiment": exp.name, "spec_hash": exp.scientific_hash, **metrics}
    metrics["wall_time_s"] = time.perf_counter() - start
    title = f"{exp.name}: inpainting (hidden pixels red)"
    inpainting_figure(args.plot, rows, metrics, title)
    write_json(args.metrics, metrics)
    print(f"inpaint: {metrics['wall_time_s']:.1f} s")


if __name__ == "__main__":
    run_stage(main)
