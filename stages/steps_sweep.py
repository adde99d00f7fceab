"""DRL against CDRL at equal compute: sample quality (ratio to the held-out floor, over repeated
draws) against network passes per sample for K = 0, 5, 7, 15, 30 Langevin steps per level and
each method's own generation K (its default)."""

from common import input_checks, load_experiment, parser, run_stage

from drlx.evaluate.digits_features import ARRAY_NAMES, classifier_from_arrays
from drlx.evaluate.sweep import fd_quality, steps_sweep, swd_quality, sweep_figure
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)  # --spec: the DRL experiment, whose folder the outputs go to
    p.add_argument("--cdrl-spec", required=True, help="the same experiment with an initializer")
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--drl-model", required=True, help="DRL's EMA weights")
    p.add_argument("--cdrl-model", required=True, help="CDRL's EMA weights")
    p.add_argument("--features", help="digits: the classifier of the features stage (.npz)")
    p.add_argument("--out", required=True, help="output: the sweep (JSON)")
    p.add_argument("--plot", required=True, help="output: quality against passes (PNG)")
    args = p.parse_args()
    cdrl = load_experiment(args.cdrl_spec)
    drl = load_experiment(args.spec)  # loaded last: the ledger records this spec
    data = read_arrays(args.data, "heldout", "heldout_b")
    if args.features:
        arrays = read_arrays(args.features, *ARRAY_NAMES)
        with input_checks(KeyError, ValueError):  # an extractor of another shape
            extractor = classifier_from_arrays(arrays, args.features)
        quality, metric = fd_quality(drl, extractor, **data), "fd_over_floor"
    else:
        quality, metric = swd_quality(drl, **data), "swd_over_floor"
    methods = {
        "drl": (drl, drl.ebm(*drl.load_model(args.drl_model))),
        "cdrl": (cdrl, cdrl.ebm(*cdrl.load_model(args.cdrl_model))),
    }
    sweep = steps_sweep(methods, quality, metric)
    sweep_figure(args.plot, sweep, f"{drl.name}: DRL and CDRL at equal compute")
    write_json(args.out, {"experiment": drl.name, "spec_hash": drl.scientific_hash, **sweep})


if __name__ == "__main__":
    run_stage(main)
