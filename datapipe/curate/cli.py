"""`datapipe curate push|pull|status`: human review in Argilla."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from datapipe.errors import DatapipeError

curate_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Review samples in Argilla and bring the decisions back."
)
console = Console()
err_console = Console(stderr=True)
Target = Annotated[str, typer.Argument(help="pipeline.yaml, or a run folder (runs/<run_id>)")]


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


def _with_run(target: str, action: Callable[..., Any]) -> Any:
    """``action(cfg, store, progress)`` on the run, with a progress display; errors exit 2 with their message."""
    from datapipe.report import RichProgress
    from datapipe.runs import load_target
    from datapipe.store import store_for

    try:
        cfg = load_target(target)
        with RichProgress() as progress:
            return action(cfg, store_for(cfg), progress)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)


@curate_app.command()
def push(target: Target = "pipeline.yaml") -> None:
    """Create or update one Argilla dataset per sample kind (records keyed by sample id)."""
    from datapipe.curate import push as do_push

    result = _with_run(target, do_push)
    table = Table(
        "dataset", "records", "new", "updated", "removed (stale)", "on server", title=f"pushed to {result.url}"
    )
    for name, c in result.datasets.items():
        stale = str(c["removed_stale"]) + (
            f" ({c['removed_stale_reviewed']} reviewed)" if c["removed_stale_reviewed"] else ""
        )
        table.add_row(name, str(c["records"]), str(c["new"]), str(c["updated"]), stale, str(c["on_server"]))
    console.print(table)
    console.print(f"workspace [bold]{result.workspace}[/], {result.seconds:.1f} s")


@curate_app.command()
def pull(target: Target = "pipeline.yaml") -> None:
    """Apply submitted reviews: accepted -> curated, discarded -> rejects, corrections -> new text and DPO pairs."""
    from datapipe.curate import pull as do_pull

    result = _with_run(target, do_pull)
    _print_decisions(result.manifest)
    console.print(f"pulled from {result.url} in {result.seconds:.1f} s")


@curate_app.command()
def status(target: Target = "pipeline.yaml") -> None:
    """Show the last push and the decisions of the last pull."""
    from datapipe.runs import load_target
    from datapipe.store import store_for

    try:
        store = store_for(load_target(target))
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
        return
    last_push = store.read_json("curate", "push.json")
    if last_push:
        console.print(f"last push: {last_push['url']} workspace {last_push['workspace']}: {last_push['datasets']}")
    manifest = store.read_manifest("curate")
    if not manifest:
        console.print("no reviews pulled yet: run `datapipe curate pull`")
        return
    _print_decisions(manifest)


def _print_decisions(manifest: dict) -> None:
    table = Table("decision", "records", title=f"review decisions (policy {manifest['policy']})")
    for decision, n in manifest["decisions"].items():
        table.add_row(decision, str(n))
    table.add_row("not pushed / not on server", str(manifest["not_pushed_or_unreviewed"]))
    table.add_row("new preference pairs (corrections)", str(manifest["reviewer_pairs"]))
    console.print(table)
