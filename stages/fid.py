"""FID, Inception Score and KID of model samples against a data set's reference statistics
(from stages/fid_reference.py, computed with the same Inception weights)."""

from common import input_checks, load_experiment, parser, run_stage

from drlx.errors import InputError
from drlx.evaluate.fid import inception_outputs, sample_metrics, to_uint8
from drlx.evaluate.inception import load_inception, resolve_weights_path
from drlx.io import read_arrays, sha256_file, write_json

STATISTICS = ("mu", "sigma", "num_images", "kid_features", "weights_sha256")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--samples", required=True, help="samples from the sample stage (.npz)")
    p.add_argument("--reference", required=True, help="statistics from the fid_reference stage")
    p.add_argument("--metrics", required=True, help="output: FID, IS, KID (JSON)")
    p.add_argument("--batch-size", type=int, default=32, help="images per Inception pass")
    p.add_argument("--key-suffix", default="", help="appended to the metrics' names (_guided)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    with input_checks(FileNotFoundError, ValueError):  # the weights: missing, unreadable
        weights = resolve_weights_path(exp.evaluate.inception_weights)
        inception = load_inception(weights)
    reference = read_arrays(args.reference, *STATISTICS)
    sha = sha256_file(weights)
    if str(reference["weights_sha256"]) != sha:
        raise InputError(
            f"{args.reference}: computed with other Inception weights (sha256 "
            f"{reference['weights_sha256']}) than {weights} ({sha}); re-run fid_reference"
        )
    samples = read_arrays(args.samples, "samples")["samples"]
    if samples.ndim != 4 or samples.shape[-1] not in (1, 3):
        raise InputError(f"{args.samples}: 'samples' has shape {samples.shape}; FID needs images")
    features, logits = inception_outputs(
        inception, to_uint8(samples), args.batch_size, exp.runtime.progress
    )
    # the spread over evaluate.num_draws disjoint blocks, like every other quality number
    metrics = sample_metrics(features, logits, reference, num_blocks=exp.evaluate.num_draws)
    write_json(
        args.metrics,
        {
            "experiment": exp.name,
            "spec_hash": exp.scientific_hash,
            **{f"{name}{args.key_suffix}": value for name, value in metrics.items()},
            "num_reference": int(reference["num_images"]),
            "inception_weights_sha256": sha,
        },
    )


if __name__ == "__main__":
    run_stage(main)
