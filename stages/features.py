"""Digits only: train the feature extractor of the digits metrics (a small classifier) on the
training split; write its weights and its held-out accuracy."""

from common import input_checks, load_experiment, parser, run_stage

from drlx.errors import MissingArraysError
from drlx.evaluate.digits_features import (
    classifier_to_arrays,
    fit_feature_extractor,
    labelled_split_names,
    require_digits,
)
from drlx.io import read_arrays, write_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (with labels)")
    p.add_argument("--out", required=True, help="output: extractor weights (.npz)")
    p.add_argument("--metrics", required=True, help="output: held-out accuracy (JSON)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    with input_checks(ValueError):
        require_digits(exp.data, args.spec, "the features stage")
    try:
        data = read_arrays(args.data, *labelled_split_names())
    except MissingArraysError as err:
        hint = "re-run the prepare stage (it writes the digits' labels)"
        raise MissingArraysError(f"{err}; {hint}") from None
    model, metrics = fit_feature_extractor(data, exp.key("digits_features"))
    write_arrays(args.out, **classifier_to_arrays(model))
    write_json(args.metrics, {"experiment": exp.name, "spec_hash": exp.scientific_hash, **metrics})


if __name__ == "__main__":
    run_stage(main)
