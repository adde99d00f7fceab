"""Stage 3: generate samples from white noise down the levels with the EMA weights.

On several processes (hosts, after `jax.distributed.initialize()`) every process generates its
share of the chains and gets all the samples back (`drlx.samplers.many.sample`); only process 0
writes the outputs (the plot is not written atomically, so two writers of one path on a shared
filesystem could interleave), and no process returns before they are written. Every input is
read (and checked) on every process before sampling, so a bad one stops all of them alike."""

from common import load_experiment, parser, run_stage

from drlx.evaluate.plots import samples_figure
from drlx.io import read_arrays, write_arrays
from drlx.samplers.many import sample
from drlx.sharding import barrier, is_primary


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (for the plot)")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--out", required=True, help="output: samples (.npz)")
    p.add_argument("--plot", required=True, help="output: samples next to held-out data (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    model = exp.load_model(args.model)
    heldout = read_arrays(args.data, "heldout")["heldout"]  # every input checked before sampling
    samples = sample(exp, exp.ebm(*model))
    if is_primary():
        write_arrays(args.out, samples=samples)
        title = f"{exp.name}: held-out data vs model samples"
        samples_figure(args.plot, heldout[: len(samples)], samples, title)
    barrier("drlx sample stage: outputs written")


if __name__ == "__main__":
    run_stage(main)
