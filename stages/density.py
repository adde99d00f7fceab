"""Stage: normalized density. AIS log Z of every conditional EBM, the held-out bound on log p(x_0)
(nats for toys, bits/dim for images), and for toys AIS checked against 2D quadrature."""

import time

import numpy as np
from common import load_experiment, parser

from drlx.data.toy2d import toy_log_density
from drlx.density.ais import AISSettings
from drlx.density.bound import bits_per_dim, dequantize, path_bound
from drlx.density.levels import conditional_log_z, top_level_base
from drlx.density.longrun import long_run
from drlx.density.plots import ais_vs_quadrature, image_bound
from drlx.density.quadrature import conditional_log_z_grid
from drlx.diffusion import q_sample_pair
from drlx.evaluate.plots import long_run_figure
from drlx.io import load_model, read_arrays, write_arrays, write_json
from drlx.keys import example_keys
from drlx.sharding import make_mesh
from drlx.spec.data import Toy2DData


def _stats(v: np.ndarray) -> dict:
    return {"mean": float(np.mean(v)), "se": float(np.std(v, ddof=1) / np.sqrt(len(v)))}


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
    spec, d = exp.spec, exp.spec.density
    data = read_arrays(args.data, "train", "heldout", "heldout_b")
    ebm = exp.ebm(load_model(args.model, exp.init_network()))
    mesh = make_mesh(spec.runtime.devices)
    chunk = max(1, spec.runtime.sample_batch_size // d.num_chains // mesh.size) * mesh.size
    settings = AISSettings(
        d.num_chains, d.num_annealing_steps, d.kernel_steps, d.base_proposals, d.target_acceptance
    )
    top = top_level_base(exp.schedule, data["train"])
    num = exp.schedule.num_levels
    heldout = data["heldout"][: d.num_heldout]
    toy = isinstance(spec.data, Toy2DData)
    x0 = heldout if toy else dequantize(heldout, spec.seed)
    start = time.perf_counter()
    res = path_bound(
        ebm, x0, exp.key("density"), settings, top, d.top_chains, chunk, mesh, spec.runtime.progress
    )
    bound_mean, bound_se = res.mean_and_se()
    metrics = {
        "experiment": spec.name,
        "spec_hash": spec.scientific_hash(),
        "num_heldout": len(x0),
        "bound_nats": {"mean": bound_mean, "se": bound_se},
        "bound_per_level_nats": res.terms.mean(0).tolist(),
        "ais": {
            "acceptance_per_level": [*res.acceptance.mean(0).tolist(), res.top_acceptance],
            "log_z_se_per_level": [*res.log_z_se.mean(0).tolist(), res.top_log_z_se],
            "top_log_z": res.top_log_z,
        },
    }
    print(f"bound: {time.perf_counter() - start:.1f} s")
    if toy:
        true = toy_log_density(spec.data.name, heldout)
        diff = true - res.per_example  # model error (>= 0 in expectation, up to the bound's gap)
        metrics["heldout_nll_nats"] = {"model_bound": -bound_mean, "se": bound_se}
        metrics["heldout_true_nll_nats"] = _stats(-true)
        metrics["nll_difference_nats"] = _stats(diff)
        start = time.perf_counter()
        per = -(-d.num_quadrature_checks // num)
        t = np.repeat(np.arange(num), per)
        x = data["heldout"][-len(t) :]  # other examples than the bound's, when there are enough
        keys = example_keys(exp.key("density-check"), len(t))
        _, x_tilde = q_sample_pair(exp.schedule, x, t, keys, False)
        quad = conditional_log_z_grid(ebm, x_tilde, t, top, d.quadrature_resolution)
        log_z, log_z_se = np.zeros(len(t)), np.zeros(len(t))
        for rows, chains, steps, name in (
            (t == 0, d.check_chains_level_0, d.check_annealing_steps_level_0, "check-level-0"),
            (t > 0, d.check_chains, d.check_annealing_steps, "check-levels-1+"),
        ):
            check = settings._replace(num_chains=chains, num_temperatures=steps)
            per_device = max(1, spec.runtime.sample_batch_size // chains // mesh.size)
            key = exp.key(f"density-{name}")
            ais = conditional_log_z(
                ebm, x_tilde[rows], t[rows], key, check, top, per_device * mesh.size, mesh=mesh
            )
            log_z[rows], log_z_se[rows] = ais.log_z, ais.log_z_se
        err = log_z - quad.log_z
        metrics["ais_vs_quadrature"] = {
            "num": len(t),
            "mae_nats": float(np.mean(np.abs(err))),
            "max_abs_error_nats": float(np.max(np.abs(err))),
            "mae_per_level": [float(np.mean(np.abs(err[t == k]))) for k in range(num)],
            "mean_ais_se": float(np.mean(log_z_se)),
            "max_log_edge_share": float(np.max(quad.log_edge_share)),
            "passes_0.01": bool(np.mean(np.abs(err)) < 0.01),
        }
        print(f"AIS vs quadrature: {time.perf_counter() - start:.1f} s")
        title = f"{spec.name}: AIS check, held-out NLL bound {-bound_mean:.3f} nats"
        ais_vs_quadrature(args.plot, log_z, quad.log_z, t, res.terms, title)
    else:
        dim = int(np.prod(exp.shape))
        bpd = bits_per_dim(res.per_example, dim)
        se = float(
            np.sqrt(np.var(bpd, ddof=1) / len(bpd) + (res.top_log_z_se / dim / np.log(2)) ** 2)
        )
        metrics["bits_per_dim"] = {"mean": float(np.mean(bpd)), "se": se}
        metrics["discretization"] = (
            "8-bit: uniform dequantization of k / 127.5 - 1, bins of 1 / 127.5 (digits: 17 grey "
            "levels scaled to 0..255, treated as 8-bit)"
        )
        title = f"{spec.name}: held-out {np.mean(bpd):.3f} bits/dim"
        image_bound(args.plot, res.terms, bpd, title)
    start = time.perf_counter()
    metrics["long_run"], traces = long_run(
        exp, ebm, exp.key("sample"), data["heldout"], data["heldout_b"], spec.runtime.progress
    )
    write_arrays(args.long_run, **traces)
    long_run_figure(args.long_run_plot, traces, f"{spec.name}: long-run chains")
    print(f"long-run chains: {time.perf_counter() - start:.1f} s")
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
