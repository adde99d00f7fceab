"""The `drlx` command: validate specs, print the spec schema, audit, report, reproduce."""

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from drlx.errors import DrlxError, exit_known_failure
from drlx.spec import ExperimentSpec, SpecError, load_spec


class _App(typer.Typer):
    """The command group; a known failure (DrlxError) that a command lets through prints
    `error: <message>` and exits 2 without a traceback, like the stages (stages/common.py)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except DrlxError as err:
            raise exit_known_failure(err) from None


app = _App(
    help="drlx: energy-based models by diffusion recovery likelihood.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="spec files to check")],
) -> None:
    """Check spec files: one line per spec (ok, with its hash), or one line per problem."""
    from drlx.builder import check_spec

    failed = False
    for path in specs:
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                spec = load_spec(path)
                check_spec(spec)
            for w in warned:
                typer.echo(f"warning: {w.message}")
        except SpecError as err:
            failed = True
            for problem in err.problems:
                typer.echo(problem)
        else:
            typer.echo(f"{path}: ok ({spec.name}, hash {spec.scientific_hash()[:12]})")
    raise typer.Exit(1 if failed else 0)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="write here instead of standard output")] = None,
) -> None:
    """Write the JSON Schema of experiment specs (for editors and documentation)."""
    text = json.dumps(ExperimentSpec.model_json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@app.command("convert-inception")
def convert_inception(
    src: Annotated[Path, typer.Argument(help="pt_inception-2015-12-05-6726825d.pth")],
    dst: Annotated[Path, typer.Argument(help="output .safetensors")],
) -> None:
    """Convert the standard FID Inception weights (.pth, read tensor-only) to safetensors."""
    from drlx.evaluate.inception import convert_inception_weights

    try:
        count = convert_inception_weights(src, dst)
    except (ImportError, OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{dst}: {count} tensors")


@app.command()
def audit(
    targets: Annotated[
        list[str] | None, typer.Argument(help="metrics files, each optionally PATH:key")
    ] = None,
    all_files: Annotated[
        bool,
        typer.Option(
            "--all", help="every metrics file declared in any dvc.yaml (root, stages/paper, ...)"
        ),
    ] = False,
) -> None:
    """Trace numbers to the stage, inputs, spec, data, code and environment that produced them;
    verify every hash against dvc.lock and the ledger. Every pipeline of the repository is
    covered (each dvc.yaml with its dvc.lock). Exit 1 if anything changed after the fact."""
    from rich.console import Console

    from drlx.audit import Auditor, find_root, render, split_target

    if not targets and not all_files:
        typer.echo("error: give metrics files (PATH[:key]) or --all", err=True)
        raise typer.Exit(2)
    try:
        auditor = Auditor(find_root())
        pairs = [split_target(t) for t in targets or []]
        if all_files:
            pairs += [(str(auditor.root / p), None) for p in auditor.metrics_files()]
        results = [auditor.audit(path, key) for path, key in pairs]
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    console = Console(highlight=False)
    for result in results:
        console.print(render(result))
        for warning in result.warnings:
            console.print(f"[yellow]warning[/yellow]: {warning}", soft_wrap=True)
        for problem in result.problems:
            console.print(f"[red]FAIL[/red]: {problem}", soft_wrap=True)
    not_run = auditor.not_run() if all_files else []
    if not_run:
        names = ", ".join(not_run)
        console.print(f"not run yet (declared, never produced): {names}", soft_wrap=True)
    failed = [r.target for r in results if not r.ok]
    summary = f"audit: {len(results) - len(failed)} of {len(results)} metrics files pass"
    console.print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    raise typer.Exit(1 if failed else 0)


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="folder for report.md and report.html")] = Path(
        "reports"
    ),
) -> None:
    """Write one Markdown and one self-contained HTML page: every experiment's numbers with
    their audit status, the paper's numbers, sample grids and training curves."""
    from drlx.audit import find_root
    from drlx.report import build_report

    try:
        md, page = build_report(find_root(), out)
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {md} and {page}")


@app.command()
def repro(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="as for `dvc repro`, from the root (default: dvc.yaml)"),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="stages at once")] = 1,
) -> None:
    """`dvc repro TARGETS`, running up to JOBS independent stages at once (each stage's output
    in a log under .dvc/tmp/repro/; one line per start and finish here)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from drlx.repro import reproduce

    try:
        root = Path(Repo.find_root())
    except NotDvcRepoError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(reproduce(root, list(targets or ["dvc.yaml"]), jobs, typer.echo))


@app.command()
def deps(
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 with a diff if any is stale")
    ] = False,
) -> None:
    """Recompute every stage's code deps (its script and the repository Python files it imports)
    in dvc.yaml and stages/paper/dvc.yaml."""
    from drlx import stage_deps

    try:
        root = stage_deps.find_root()
        for problem in stage_deps.warnings(root):
            typer.echo(f"warning: {problem} does not exist (ImportError when it runs)", err=True)
        if check:
            diffs = stage_deps.check(root)
        else:
            changed = stage_deps.write(root)
    except (OSError, ValueError, SyntaxError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if check:
        for diff in diffs:
            typer.echo(diff, nl=False)
        if diffs:
            typer.echo("stale code deps: run `drlx deps` to rewrite them", err=True)
        raise typer.Exit(1 if diffs else 0)
    for path in changed:
        typer.echo(f"rewrote {path.relative_to(root)}")
    if not changed:
        typer.echo("code deps are current")


if __name__ == "__main__":
    app()
