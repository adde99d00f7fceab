"""`drlx report`: one Markdown page and one self-contained HTML page of every experiment's
numbers (with their audit status), the paper's numbers where there is a counterpart, sample
grids, training curves and any other plot the stages wrote.

Not a DVC stage: each number's audit status is read from the dvc.lock files (of every pipeline:
the root's, stages/paper's), which DVC rewrites after every stage, the report's own included, so
such a stage would always be out of date. Run it after `dvc repro` (`make report`).
"""

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from drlx.audit import Auditor, Result
from drlx.io import atomic_path
from drlx.ledger import LEDGER_DIR, read_metrics

# docs/method.md §10: (system, data, metric, metric keys we write, paper value, our spec).
PAPER = (
    ("DRL T6", "CIFAR-10 32x32", "FID", "fid", 9.58, "cifar10_t6"),
    ("DRL T6", "CIFAR-10 32x32", "IS", "inception_score", 8.30, "cifar10_t6"),
    ("DRL", "CelebA 64x64", "FID (unverified)", "fid", 5.98, "celeba64"),
    ("CDRL", "CIFAR-10", "FID", "fid", 4.31, "cifar10_cdrl"),
    ("CDRL-large", "CIFAR-10", "FID", "fid", 3.68, None),
    ("CDRL", "ImageNet 32x32", "FID", "fid", 9.35, "imagenet32_cdrl"),
    # the same model sampled with classifier-free guidance (stages/paper: fid_guided stage)
    ("CDRL + guidance (w = 0.7)", "ImageNet 32x32", "FID", "fid_guided", 6.18, "imagenet32_cdrl"),
)
# The paper pipeline's numbers (stages/fid.py writes them to runs/NAME/fid.json): key, name.
FID_KEYS = (("fid", "FID"), ("inception_score", "IS"), ("kid", "KID"))
NOT_METRICS = ("train_loss.json",)  # JSON outputs that are histories, not numbers
# The numbers a reader looks for first: (file name, key, what it is); shown when present.
HEADLINE = (
    ("metrics.json", "sliced_wasserstein.ratio.mean", "sliced Wasserstein / held-out floor"),
    ("metrics.json", "mmd2.model.mean", "MMD² against held-out data"),
    ("metrics.json", "mmd2.floor.mean", "MMD² of held-out data (floor)"),
    ("density_metrics.json", "heldout_nll_nats.model_bound", "held-out NLL, model bound (nats)"),
    ("density_metrics.json", "heldout_true_nll_nats.mean", "held-out NLL, true density (nats)"),
    ("density_metrics.json", "bits_per_dim.mean", "held-out bits/dim (bound)"),
    ("density_metrics.json", "bits_per_dim.se", "its standard error"),
    ("density_metrics.json", "ais_vs_quadrature.mae_nats", "AIS vs quadrature, MAE (nats)"),
    ("density_metrics.json", "long_run.verdict", "long-run chains (10k steps)"),
    ("feature_metrics.json", "fd_digits_features.ratio.mean", "Frechet distance / floor"),
    ("feature_metrics.json", "kid_digits_features.excess.mean", "KID - its floor (features)"),
    ("feature_metrics.json", "classifier_confidence_samples", "classifier confidence on samples"),
    ("ood_metrics.json", "best.overall", "OOD detection: best score"),
    ("ood_metrics.json", "best.min_auroc.bound", "OOD: lowest AUROC over the sets, bound"),
    ("ood_metrics.json", "best.min_auroc.level0", "OOD: lowest AUROC over the sets, level 0"),
    ("guided_metrics.json", "guidance.best_accuracy", "guidance: best class accuracy over w"),
    ("guided_metrics.json", "guidance.smallest_w_reaching_0.95", "guidance: least w at 0.95"),
    ("inpaint_metrics.json", "masks.right_half.accuracy.model.mean", "inpainting: right-half acc."),
    *(
        ("guided_metrics.json", f"compositions.{name}.share_in_target.mean", f"{name}: in target")
        for name in ("right_and_upper", "even_and_at_least_5", "not_has_loop")
    ),
    ("fid.json", "fid", "FID"),
    ("fid.json", "inception_score", "Inception score"),
)


@dataclass
class Number:
    file: str
    key: str
    value: object
    status: str  # "pass", "fail" or "not audited"
    problems: tuple[str, ...] = ()  # why its file's audit failed
    stage: str = ""  # the stage that produced its file (DVC's address), "" if none


def experiments(root: Path) -> list[str]:
    """Experiments of params.yaml, then any other folder under runs/ (paper specs run alone)."""
    names: list[str] = []
    params = root / "params.yaml"
    if params.is_file():
        names += list((yaml.safe_load(params.read_text()) or {}).get("experiments") or {})
    runs = root / "runs"
    if runs.is_dir():
        names += sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name not in names)
    return names


def collect(root: Path, auditor: Auditor | None, name: str) -> list[Number]:
    """Every number of an experiment's metrics files (any JSON object in runs/NAME/), each
    with the audit status of its file and key."""
    folder = root / "runs" / name
    numbers: list[Number] = []
    if not folder.is_dir():
        return numbers
    for file in sorted(folder.rglob("*.json")):
        if LEDGER_DIR in file.relative_to(folder).parts or file.name in NOT_METRICS:
            continue
        values = read_metrics(file)
        if values is None:
            continue
        rel = file.relative_to(root).as_posix()
        result: Result | None = None
        if auditor is not None and rel in auditor.producer:
            result = auditor.audit(str(file))
        for key, value in values.items():
            if result is None:
                status = "not audited"
            else:
                status = "pass" if result.ok and key not in result.failed_keys else "fail"
            problems = tuple(result.problems) if result is not None else ()
            stage = auditor.producer.get(rel, "") if auditor is not None else ""
            numbers.append(Number(rel, key, value, status, problems, stage))
    return numbers


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:8]) + (", …" if len(value) > 8 else "") + "]"
    return str(value)


def _with_interval(number: Number, others: list[Number]) -> str:
    """A mean with its 95% interval "m [low, high]" when its file has them (`X.mean`,
    `X.low`, `X.high`: an estimate over repeated draws), else the value alone."""
    if not number.key.endswith(".mean"):
        return _fmt(number.value)
    stem = number.key[: -len("mean")]
    bounds = {
        n.key[len(stem) :]: n.value
        for n in others
        if n.file == number.file and n.key in (stem + "low", stem + "high")
    }
    if len(bounds) < 2:
        return _fmt(number.value)
    return f"{number.value:.4g} [{bounds['low']:.4g}, {bounds['high']:.4g}]"


def build_report(root: str | Path = ".", out: str | Path = "reports") -> tuple[Path, Path]:
    """Write `out`/report.md (images linked relative) and `out`/report.html (images embedded).

    Arguments:
        root: the repository (holding dvc.yaml, dvc.lock, params.yaml, runs/).
        out: output folder, relative to root unless absolute.

    Returns:
        The paths of the Markdown and HTML pages.
    """
    root = Path(root).resolve()
    out = Path(out) if Path(out).is_absolute() else root / out
    out.mkdir(parents=True, exist_ok=True)
    try:
        auditor = Auditor(root)
    except FileNotFoundError:
        auditor = None  # nothing has run yet: every number "not audited"
    names = experiments(root)
    numbers = {name: collect(root, auditor, name) for name in names}
    md, body = [], []  # Markdown lines, HTML fragments
    md += ["# drlx report", ""]
    total = [n for ns in numbers.values() for n in ns]
    failed = sum(n.status == "fail" for n in total)
    summary = (
        f"{len(total)} numbers in {len(names)} experiments; audit: "
        f"{sum(n.status == 'pass' for n in total)} pass, {failed} fail, "
        f"{sum(n.status == 'not audited' for n in total)} not audited (`drlx audit --all`)."
    )
    md += [summary, ""]
    body += ["<h1>drlx report</h1>", f"<p>{html.escape(summary)}</p>"]

    # The paper's numbers next to ours.
    rows = []
    for system, data, metric, key, paper, spec in PAPER:
        ours = next(
            (n for n in numbers.get(spec or "", []) if n.key == key and spec is not None), None
        )
        here = f"{_fmt(ours.value)} ({ours.status})" if ours else "not run here"
        rows.append((system, data, metric, f"{paper:g}", spec or "no spec", here))
    head = ("system", "data", "metric", "paper", "our spec", "ours (audit)")
    md += ["## Paper results (docs/method.md §10)", "", *_md_table(head, rows), ""]
    body += ["<h2>Paper results (docs/method.md §10)</h2>", _html_table(head, rows)]

    # Every FID/IS/KID we have (the paper pipeline's), with its audit and the paper's value.
    paper_values = {
        (spec, key): f"{paper:g}" + (" (unverified)" if "unverified" in what else "")
        for _, _, what, key, paper, spec in PAPER
        if spec
    }
    rows = [
        (name, metric, _fmt(n.value), paper_values.get((name, key), "-"),
         n.stage or "no stage", n.status)
        for name in names
        for key, metric in FID_KEYS
        for n in numbers[name]
        if n.key == key and n.file.endswith("/fid.json")
    ]  # fmt: skip
    head = ("experiment", "metric", "ours", "paper", "stage", "audit")
    title = "FID, IS and KID (stages/paper/dvc.yaml)"
    if rows:
        md += [f"## {title}", "", *_md_table(head, rows), ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(head, rows)]
    else:
        md += [f"## {title}", "", "None yet (`make paper`).", ""]
        body += [f"<h2>{html.escape(title)}</h2>", "<p>None yet (<code>make paper</code>).</p>"]

    rows = [
        (name, what, _with_interval(n, numbers[name]), n.status)
        for name in names
        for file, key, what in HEADLINE
        for n in numbers[name]
        if n.key == key and n.file.endswith("/" + file)
    ]
    head = ("experiment", "number", "value", "audit")
    md += ["## Headline numbers", "", *_md_table(head, rows), ""]
    body += ["<h2>Headline numbers</h2>", _html_table(head, rows)]

    for name in names:
        md += [f"## {name}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        rows = [(n.file, n.key, _fmt(n.value), n.status) for n in numbers[name]]
        if rows:
            md += [*_md_table(("file", "key", "value", "audit"), rows), ""]
            table = _html_table(("file", "key", "value", "audit"), rows)
            body.append(f"<details><summary>all {len(rows)} numbers</summary>{table}</details>")
        else:
            md += ["No metrics yet (run `dvc repro`).", ""]
            body.append("<p>No metrics yet (run <code>dvc repro</code>).</p>")
        problems = list(dict.fromkeys(p for n in numbers[name] for p in n.problems))
        if problems:
            shown = problems[:10] + ([f"... {len(problems) - 10} more"] if problems[10:] else [])
            md += ["Audit problems:", "", *[f"- {p}" for p in shown], ""]
            items = "".join(f"<li>{html.escape(p)}</li>" for p in shown)
            body.append(f"<p>Audit problems:</p><ul>{items}</ul>")
        folder = root / "runs" / name
        for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            link = Path(os.path.relpath(png, out)).as_posix()
            md += [f"![{png.stem}]({link})", ""]
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(
                f"<figure><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(png.name)}</figcaption></figure>"
            )
    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    with atomic_path(html_path) as tmp:
        tmp.write_text(_page("\n".join(body)))
    for path in (md_path, html_path):
        path.chmod(0o644)  # a page to share (temporary files are created private)
    return md_path, html_path


def _md_table(head: tuple, rows: list[tuple]) -> list[str]:
    def cell(x) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]


def _html_table(head: tuple, rows: list[tuple]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for row in rows:
        cls = " class='fail'" if "fail" in str(row[-1]) else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(trs)}</table>"


def _page(body: str) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left}tr.fail{background:#fdd}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>drlx report</title>"
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )
