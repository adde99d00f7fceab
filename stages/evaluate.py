"""Stage 4: sample-quality metrics against held-out data, and the learned level-0 density."""

from common import load_experiment, parser, run_stage

from drlx.evaluate.quality import evaluate_samples
from drlx.io import read_arrays, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--samples", required=True, help="samples from the sample stage")
    p.add_argument("--metrics", required=True, help="output: metrics (JSON)")
    p.add_argument("--plot", required=True, help="output: density heat maps (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    data = read_arrays(args.data, "heldout", "heldout_b")
    samples = read_arrays(args.samples, "samples")["samples"]
    ebm = exp.ebm(*exp.load_model(args.model))
    metrics = evaluate_samples(exp, ebm, samples, data["heldout"], data["heldout_b"], args.plot)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
