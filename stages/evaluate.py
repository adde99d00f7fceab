"""Stage 4: sample-quality metrics against held-out data, and the learned level-0 density."""

from common import load_experiment, parser

from drlx.evaluate.plots import density_heatmaps, log_density_histogram
from drlx.evaluate.toy import level0_density_grid, level0_log_density, sample_quality
from drlx.io import load_model, read_arrays, write_json
from drlx.spec.data import Toy2DData


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data", required=True, help=".npz from the prepare stage")
    p.add_argument("--model", required=True, help="EMA weights from the train stage")
    p.add_argument("--samples", required=True, help="samples from the sample stage")
    p.add_argument("--metrics", required=True, help="output: metrics (JSON)")
    p.add_argument("--plot", required=True, help="output: density heat maps (PNG)")
    args = p.parse_args()
    exp = load_experiment(args.spec)
    spec = exp.spec
    data = read_arrays(args.data, "heldout", "heldout_b")
    samples = read_arrays(args.samples, "samples")["samples"]
    metrics = sample_quality(
        samples, data["heldout"], data["heldout_b"], spec.evaluate.num_projections
    )
    network = load_model(args.model, exp.init_network())
    if isinstance(spec.data, Toy2DData):
        axis, log_model, log_true = level0_density_grid(
            exp.ebm(network), spec.data.name, spec.evaluate.heatmap_resolution
        )
        title = f"{spec.name}: learned level-0 vs true density"
        density_heatmaps(args.plot, axis, axis, log_model, log_true, title)
    else:  # images: where the level-0 model puts held-out data and its own samples
        ebm = exp.ebm(network)
        values = {
            name: level0_log_density(ebm, x)
            for name, x in (("held-out data", data["heldout"]), ("model samples", samples))
        }
        log_density_histogram(args.plot, values, f"{spec.name}: level-0 log-density")
    write_json(
        args.metrics, {"experiment": spec.name, "spec_hash": spec.scientific_hash(), **metrics}
    )


if __name__ == "__main__":
    main()
