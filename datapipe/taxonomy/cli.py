"""`datapipe taxonomy ...`: validate and show InstructLab-format taxonomies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from datapipe.errors import DatapipeError

taxonomy_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Check and inspect taxonomies of qna.yaml leaves."
)

Root = Annotated[str, typer.Argument(help="taxonomy root folder (or one qna.yaml file for validate)")]


@taxonomy_app.command()
def validate(root: Root = "taxonomies") -> None:
    """Check every qna.yaml against the InstructLab format; print `path:line: message` per problem.

    Exit code 1 when any leaf is invalid (or none is found), 2 when ROOT does not exist.
    """
    from datapipe.taxonomy.validate import find_leaf_files, validate_file

    target = Path(root)
    try:
        if target.is_file():
            files, base = [target], target.parent
        else:
            files, base = find_leaf_files(target), target
    except DatapipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not files:
        typer.echo(f"no qna.yaml found under {target}")
        raise typer.Exit(1)
    invalid = 0
    total = 0
    for path in files:
        problems = validate_file(path, base)
        invalid += bool(problems)
        total += len(problems)
        for problem in problems:
            typer.echo(str(problem))
    if total:
        typer.echo(f"{total} problem(s) in {invalid} of {len(files)} leaves")
        raise typer.Exit(1)
    typer.echo(f"{len(files)} leaves valid, 0 problems")


@taxonomy_app.command()
def show(root: Root = "taxonomies") -> None:
    """Print the taxonomy tree: folders, leaf kinds, versions, seed and Q&A counts."""
    from datapipe.taxonomy.show import build_tree

    try:
        tree = build_tree(Path(root))
    except DatapipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    Console().print(tree)
