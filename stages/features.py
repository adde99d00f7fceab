"""Digits only: train the feature extractor of the digits metrics (a small classifier) on the
training split; write its weights and its held-out accuracy."""

import sys
import time

from common import load_experiment, parser

from drlx.evaluate.digits_features import accuracy, classifier_to_arrays, train_classifier
from drlx.io import read_arrays, write_arrays, write_json
from drlx.spec.data import DigitsData

SPLITS = ("train", "heldout", "heldout_b")
MIN_ACCURACY = 0.95  # below this the feature space is too poor to judge samples by


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (with labels)")
    p.add_argument("--out", required=True, help="output: extractor weights (.npz)")
    p.add_argument("--metrics", required=True, help="output: held-out accuracy (JSON)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    spec = exp.spec
    if not isinstance(spec.data, DigitsData):
        raise ValueError(
            f"{args.spec}: data.kind is {spec.data.kind!r}; the features stage is for digits "
            "specs only"
        )
    names = [name for split in SPLITS for name in (split, f"{split}_labels")]
    try:
        data = read_arrays(args.data, *names)
    except KeyError as err:
        hint = "re-run the prepare stage (it writes the digits' labels)"
        raise KeyError(f"{err.args[0]}; {hint}") from None
    started = time.perf_counter()
    model = train_classifier(data["train"], data["train_labels"], exp.key("digits_features"))
    seconds = time.perf_counter() - started
    scores = {f"{s}_accuracy": accuracy(model, data[s], data[f"{s}_labels"]) for s in SPLITS}
    write_arrays(args.out, **classifier_to_arrays(model))
    write_json(
        args.metrics,
        {
            "experiment": spec.name,
            "spec_hash": spec.scientific_hash(),
            "num_train": len(data["train"]),
            "feature_dim": int(model.layers[-1].weight.shape[1]),
            **scores,
        },
    )
    print(f"digits feature extractor: trained in {seconds:.1f} s, accuracy {scores}")
    if min(scores["heldout_accuracy"], scores["heldout_b_accuracy"]) < MIN_ACCURACY:
        print(f"warning: held-out accuracy below {MIN_ACCURACY}", file=sys.stderr)


if __name__ == "__main__":
    main()
