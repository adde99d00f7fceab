"""FID reference statistics of a data set: Inception pool3 mean and covariance of the prepare
stage's `train` split (the papers' protocol), a feature subset for KID, the weights' SHA-256."""

from common import input_checks, load_experiment, parser, run_stage

from drlx.errors import InputError
from drlx.evaluate.fid import inception_outputs, reference_statistics, to_uint8
from drlx.evaluate.inception import load_inception, resolve_weights_path
from drlx.io import read_arrays, sha256_file, write_arrays


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage (its train split)")
    p.add_argument("--out", required=True, help="output: reference statistics (.npz)")
    p.add_argument("--batch-size", type=int, default=32, help="images per Inception pass")
    p.add_argument("--kid-features", type=int, default=5000, help="features kept for KID")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    with input_checks(FileNotFoundError, ValueError):  # the weights: missing, unreadable
        weights = resolve_weights_path(exp.evaluate.inception_weights)
        inception = load_inception(weights)
    train = read_arrays(args.data, "train")["train"]
    if train.ndim != 4 or train.shape[-1] not in (1, 3):
        raise InputError(f"{args.data}: 'train' has shape {train.shape}; FID needs images")
    features, _ = inception_outputs(
        inception, to_uint8(train), args.batch_size, exp.runtime.progress
    )
    stats = reference_statistics(features, args.kid_features, exp.seed)
    write_arrays(args.out, **stats, weights_sha256=sha256_file(weights))


if __name__ == "__main__":
    run_stage(main)
