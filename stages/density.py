"""Stage: normalized density. AIS log Z of every conditional EBM, the held-out bound on log p(x_0)
(nats for toys, bits/dim for images), for toys AIS checked against 2D quadrature, and long-run
chains."""

from common import load_experiment, parser, run_stage

from drlx.density.estimate import estimate_density
from drlx.evaluate.plots import long_run_figure
from drlx.io import read_arrays, write_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--metrics", required=True, help="output: metrics (JSON)")
    p.add_argument("--plot", required=True, help="output: AIS check / per-level bound (PNG)")
    p.add_argument("--long-run", required=True, help="output: long-run chain traces (.npz)")
    p.add_argument("--long-run-plot", required=True, help="output: long-run chains (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    data = read_arrays(args.data, "train", "heldout", "heldout_b")
    ebm = exp.ebm(*exp.load_model(args.model))
    metrics, traces = estimate_density(exp, ebm, data, args.plot)
    write_arrays(args.long_run, **traces)
    long_run_figure(args.long_run_plot, traces, f"{exp.name}: long-run chains")
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
