"""Stage 3: generate samples from white noise down the levels with the EMA weights.

On several processes (hosts, after `jax.distributed.initialize()`) every process generates its
share of the chains and gets all the samples back (`drlx.samplers.many.sample`); only process 0
writes the outputs (the plot is not written atomically, so two writers of one path on a shared
filesystem could interleave), and no process returns before they are written. Every input is
read (and checked) on every process before sampling, so a bad one stops all of them alike.

A class-conditional model (docs/method.md §12) samples every class equally often (sample i
requests class i mod K), plainly conditioned or, with --guidance W, by classifier-free guidance
of strength W; an unconditional or attribute-conditional model samples its unconditional
density."""

from common import load_experiment, parser, run_stage

from drlx.errors import InputError
from drlx.evaluate.plots import samples_figure
from drlx.guidance import classifier_free, requested_classes
from drlx.io import read_arrays, write_arrays
from drlx.samplers.many import sample
from drlx.sharding import barrier, is_primary


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (for the plot)")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--out", required=True, help="output: samples (.npz)")
    p.add_argument("--plot", required=True, help="output: samples next to held-out data (PNG)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance strength (class-conditional)")  # fmt: skip
    args = p.parse_args()
    exp = load_experiment(args.spec)
    cond = exp.conditioning
    class_conditional = cond is not None and cond.on == "class"
    if args.guidance and not class_conditional:
        raise InputError(f"{args.spec}: --guidance needs a class-conditional spec (condition.on)")
    model = exp.load_model(args.model)
    heldout = read_arrays(args.data, "heldout")["heldout"]  # every input checked before sampling
    guide = None
    if class_conditional:
        wanted = requested_classes(exp.evaluate.num_samples, cond.cardinalities[0])
        guide = classifier_free(wanted[:, None], cond.null, args.guidance)
    samples = sample(exp, exp.ebm(*model), guide=guide)
    if is_primary():
        write_arrays(args.out, samples=samples)
        title = f"{exp.name}: held-out data vs model samples"
        samples_figure(args.plot, heldout[: len(samples)], samples, title)
    barrier("drlx sample stage: outputs written")


if __name__ == "__main__":
    run_stage(main)
