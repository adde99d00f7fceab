"""Stage: out-of-distribution detection with the trained EBM. Per-example scores (the bound on
log p(x_0), the level-0 log-density, the per-level conditional log-densities scored by their
Mahalanobis distance to held-out data's) for held-out data and OOD sets (digits: uniform noise,
constant images, inverted, rotated and shifted digits; toys: points off the support) and any
external sets given by --ood-set (paper scale: SVHN, CIFAR-100, CelebA against CIFAR-10); AUROC
and AUPR per set and score with bootstrap intervals, and their histograms."""

import time

from common import input_checks, load_experiment, parser, run_stage

from drlx.data.ood_sets import KINDS, load_ood_set, parse_ood_set
from drlx.errors import InputError
from drlx.evaluate.ood import OODSettings, evaluate_ood, ood_histograms
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--metrics", required=True, help="output: AUROC/AUPR per set and score (JSON)")
    p.add_argument("--plot", required=True, help="output: score histograms (PNG)")
    defaults = OODSettings()
    p.add_argument("--num-examples", type=int, default=defaults.num_examples,
                   help="examples per set (level0, levels)")  # fmt: skip
    p.add_argument("--num-bound", type=int, default=defaults.num_bound,
                   help="examples per set that also get the bound (AIS)")  # fmt: skip
    p.add_argument("--ood-set", action="append", default=[], metavar="NAME=KIND:PATH",
                   help=f"an external OOD set (repeatable), KIND one of {', '.join(KINDS)}; "
                   "its first --num-examples images, resized to the data's size for "
                   "image_folder")  # fmt: skip
    args = p.parse_args()
    with input_checks(ValueError):
        wanted = [parse_ood_set(text) for text in args.ood_set]
    exp = load_experiment(args.spec)
    extra, external = {}, {}
    for name, kind, path in wanted:
        if name in extra:
            raise InputError(f"--ood-set {name!r} given twice")
        extra[name] = load_ood_set(kind, path, args.num_examples, size=exp.shape[0])
        external[name] = {"kind": kind, "path": path, "num_examples": len(extra[name])}
    data = read_arrays(args.data, "train", "heldout", "heldout_b")
    ebm = exp.ebm(*exp.load_model(args.model))
    settings = defaults._replace(num_examples=args.num_examples, num_bound=args.num_bound)
    start = time.perf_counter()
    metrics, scores = evaluate_ood(exp, ebm, data, settings, log=print, extra_sets=extra)
    if external:
        metrics["external_sets"] = external
    metrics["wall_time_s"] = time.perf_counter() - start
    ood_histograms(args.plot, scores, metrics, f"{exp.name}: OOD scores (higher = in-distribution)")
    write_json(args.metrics, metrics)
    print(f"ood: {metrics['wall_time_s']:.1f} s; best score: {metrics['best']['overall']}")


if __name__ == "__main__":
    run_stage(main)
