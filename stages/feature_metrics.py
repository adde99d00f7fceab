"""Digits only: sample quality in the feature space of the digits classifier (features stage):
Frechet distance, KID, precision/recall and class shares, each next to its held-out floor."""

from common import input_checks, load_experiment, parser, run_stage

from drlx.evaluate.digits_features import (
    ARRAY_NAMES,
    class_share_arrays,
    classifier_from_arrays,
    digits_metrics,
    require_digits,
)
from drlx.evaluate.plots import class_shares_bars
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--samples", required=True, help="samples from the sample stage")
    p.add_argument("--features", required=True, help="extractor (.npz) from the features stage")
    p.add_argument("--metrics", required=True, help="output: feature-space metrics (JSON)")
    p.add_argument("--plot", required=True, help="output: class shares, samples vs held-out (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    with input_checks(ValueError):
        require_digits(exp.data, args.spec, "the feature_metrics stage")
    data = read_arrays(args.data, "heldout", "heldout_b")
    samples = read_arrays(args.samples, "samples")["samples"]
    arrays = read_arrays(args.features, *ARRAY_NAMES)
    with input_checks(KeyError, ValueError):  # an extractor of another shape
        extractor = classifier_from_arrays(arrays, args.features)
    metrics = digits_metrics(
        samples, data["heldout"], data["heldout_b"], extractor, exp.evaluate.num_draws,
        exp.evaluate.draw_size,
    )  # fmt: skip
    title = f"{exp.name}: class shares by the digits classifier"
    class_shares_bars(args.plot, class_share_arrays(metrics), title)
    write_json(args.metrics, {"experiment": exp.name, "spec_hash": exp.scientific_hash, **metrics})


if __name__ == "__main__":
    run_stage(main)
