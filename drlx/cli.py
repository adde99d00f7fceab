"""The `drlx` command: validate specs, print the spec schema."""

import json
from pathlib import Path
from typing import Annotated

import typer

from drlx.spec import ExperimentSpec, SpecError, load_spec

app = typer.Typer(
    help="drlx: energy-based models by diffusion recovery likelihood.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="spec files to check")],
) -> None:
    """Check spec files: one line per spec (ok, with its hash), or one line per problem."""
    failed = False
    for path in specs:
        try:
            spec = load_spec(path)
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


if __name__ == "__main__":
    app()
