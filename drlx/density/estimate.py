"""The density engine: the held-out likelihood bound with its AIS diagnostics, AIS checked
against 2D quadrature where the data are 2D with a known density, and long-run chains."""

import time

import numpy as np
from jax.sharding import Mesh

from drlx.data.sources import Toy2D
from drlx.density.bound import BoundResult, bits_per_dim, dequantize, path_bound
from drlx.density.levels import TopBase, chunk_size, conditional_log_z, top_level_base
from drlx.density.longrun import long_run
from drlx.density.plots import ais_vs_quadrature, image_bound
from drlx.density.quadrature import conditional_log_z_grid
from drlx.diffusion import q_sample_pair
from drlx.energy import ConditionalEBM
from drlx.experiment import Experiment
from drlx.keys import example_keys
from drlx.models.base import AbstractEnergyNetwork
from drlx.sharding import make_mesh


def mean_and_se(v: np.ndarray) -> dict:
    """{"mean", "se"} of a sample: its mean and the standard error of the mean."""
    return {"mean": float(np.mean(v)), "se": float(np.std(v, ddof=1) / np.sqrt(len(v)))}


def ais_check(
    exp: Experiment, ebm: ConditionalEBM, heldout: np.ndarray, top: TopBase, mesh: Mesh
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """AIS log Z against 2D quadrature for settings.num_quadrature_checks tethers spread over
    every level (x~ drawn by the forward process from the last held-out examples); level 0 gets
    its own, larger chain and temperature counts.

    Returns:
        The check's metrics, and per tether its AIS log Z, quadrature log Z and level.
    """
    s, budget = exp.density, exp.runtime.sample_batch_size
    num = ebm.schedule.num_levels
    per = -(-s.num_quadrature_checks // num)
    t = np.repeat(np.arange(num), per)
    x = heldout[-len(t) :]  # other examples than the bound's, when there are enough
    keys = example_keys(exp.key("density-check"), len(t))
    _, x_tilde = q_sample_pair(ebm.schedule, x, t, keys, False)
    quad = conditional_log_z_grid(ebm, x_tilde, t, top, s.quadrature_resolution)
    log_z, log_z_se = np.zeros(len(t)), np.zeros(len(t))
    for rows, chains, steps, name in (
        (t == 0, s.check_chains_level_0, s.check_annealing_steps_level_0, "check-level-0"),
        (t > 0, s.check_chains, s.check_annealing_steps, "check-levels-1+"),
    ):
        check = s.ais._replace(num_chains=chains, num_temperatures=steps)
        ais = conditional_log_z(
            ebm, x_tilde[rows], t[rows], exp.key(f"density-{name}"), check, top,
            chunk_size(budget, chains, mesh.size), mesh=mesh,
        )  # fmt: skip
        log_z[rows], log_z_se[rows] = ais.log_z, ais.log_z_se
    err = log_z - quad.log_z
    metrics = {
        "num": len(t),
        "mae_nats": float(np.mean(np.abs(err))),
        "max_abs_error_nats": float(np.max(np.abs(err))),
        "mae_per_level": [float(np.mean(np.abs(err[t == k]))) for k in range(num)],
        "mean_ais_se": float(np.mean(log_z_se)),
        "max_log_edge_share": float(np.max(quad.log_edge_share)),
        "passes_0.01": bool(np.mean(np.abs(err)) < 0.01),
    }
    return metrics, log_z, np.asarray(quad.log_z), t


def likelihood_bound(
    exp: Experiment,
    network: AbstractEnergyNetwork,
    x: np.ndarray,
    train: np.ndarray,
    mesh: Mesh | None = None,
) -> BoundResult:
    """The bound on log p(x) of each example over the diffusion path, every conditional's
    log Z by AIS (docs/method.md §7). Images are dequantized first (8-bit data), so the bound is
    of a density on the continuous pixel space; see `bits_per_dim`.

    Arguments:
        exp: the experiment (its density settings say how hard AIS works).
        network: the trained energy network (EMA weights).
        x: examples in data space.
        train: training data, which place the top level's AIS base.
        mesh: devices to split AIS over (default: the runtime block's).

    Returns:
        BoundResult: per example and per level, in nats (toys: with the true process's level
        terms on the same paths).
    """
    s, runtime = exp.density, exp.runtime
    mesh = make_mesh(runtime.devices) if mesh is None else mesh
    top = top_level_base(exp.schedule, train)
    toy = isinstance(exp.data, Toy2D)
    x0 = x if toy else dequantize(x, s.dequantize_seed)
    chunk = chunk_size(runtime.sample_batch_size, s.ais.num_chains, mesh.size)
    return path_bound(
        exp.ebm(network), x0, exp.key("density"), s.ais, top, s.top_chains, chunk, mesh,
        runtime.progress, exp.data.log_density if toy else None,
    )  # fmt: skip


def estimate_density(
    exp: Experiment, ebm: ConditionalEBM, data: dict[str, np.ndarray], plot: str
) -> tuple[dict, dict[str, np.ndarray]]:
    """The density stage's numbers for a trained model.

    Arguments:
        exp: the experiment.
        ebm: its conditional EBMs (EMA weights).
        data: the prepared splits "train" (the top level's AIS base), "heldout", "heldout_b".
        plot: where to draw the AIS check (2D toys) or the per-level bound (images), PNG.

    Returns:
        The metrics (bound in nats, or bits/dim for images; AIS diagnostics; the quadrature
        check and the true NLL for toys; long-run chains) and the long-run traces.
    """
    runtime = exp.runtime
    mesh = make_mesh(runtime.devices)
    heldout = data["heldout"][: exp.density.num_heldout]
    toy = isinstance(exp.data, Toy2D)
    start = time.perf_counter()
    res = likelihood_bound(exp, ebm.network, heldout, data["train"], mesh)
    bound_mean, bound_se = res.mean_and_se()
    metrics = {
        "experiment": exp.name,
        "spec_hash": exp.scientific_hash,
        "num_heldout": len(heldout),
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
        true = exp.data.log_density(heldout)
        diff = true - res.per_example  # model error (>= 0 in expectation, up to the bound's gap)
        metrics["heldout_nll_nats"] = {"model_bound": -bound_mean, "se": bound_se}
        metrics["heldout_true_nll_nats"] = mean_and_se(-true)
        metrics["nll_difference_nats"] = mean_and_se(diff)
        # the same difference level by level (they add up to it): each level's expected KL
        # divergence from the true conditional, so the gap can be traced to its levels
        per_level = res.reference_terms - res.terms
        metrics["nll_difference_per_level_nats"] = [mean_and_se(v) for v in per_level.T]
        start = time.perf_counter()
        top = top_level_base(exp.schedule, data["train"])
        check, log_z, quad_log_z, t = ais_check(exp, ebm, data["heldout"], top, mesh)
        metrics["ais_vs_quadrature"] = check
        print(f"AIS vs quadrature: {time.perf_counter() - start:.1f} s")
        title = (
            f"{exp.name}: AIS check, held-out NLL bound {-bound_mean:.3f} nats "
            f"(true density {-np.mean(true):.3f})"
        )
        ais_vs_quadrature(plot, log_z, quad_log_z, t, res.terms, title, res.reference_terms)
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
        image_bound(plot, res.terms, bpd, f"{exp.name}: held-out {np.mean(bpd):.3f} bits/dim")
    start = time.perf_counter()
    metrics["long_run"], traces = long_run(
        ebm, exp.eval_sampler, exp.long_run, exp.shape, exp.key("sample"),
        data["heldout"], data["heldout_b"], runtime.progress,
    )  # fmt: skip
    print(f"long-run chains: {time.perf_counter() - start:.1f} s")
    return metrics, traces
