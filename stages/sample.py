"""Stage 3: generate samples from white noise down the levels with the EMA weights."""

from common import load_experiment, parser, run_stage

from drlx.evaluate.plots import samples_figure
from drlx.io import read_arrays, write_arrays
from drlx.samplers.many import sample


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (for the plot)")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--out", required=True, help="output: samples (.npz)")
    p.add_argument("--plot", required=True, help="output: samples next to held-out data (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    samples = sample(exp, exp.ebm(*exp.load_model(args.model)))
    write_arrays(args.out, samples=samples)
    heldout = read_arrays(args.data, "heldout")["heldout"][: len(samples)]
    samples_figure(args.plot, heldout, samples, f"{exp.name}: held-out data vs model samples")


if __name__ == "__main__":
    run_stage(main)
