"""Stage 1: generate or read the dataset of a spec and split it."""

from common import load_experiment, parser, run_stage

from drlx.io import write_arrays


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="output .npz with train/heldout/heldout_b")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    write_arrays(args.out, **exp.data.splits(exp.seed))


if __name__ == "__main__":
    run_stage(main)
