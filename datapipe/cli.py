"""`datapipe`: the command line. Subcommands mirror the stages; `run` runs them all as a Prefect flow."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_k, _v)

import warnings  # noqa: E402

# Third-party deprecation chatter (pydantic, distilabel) would bury the progress display.
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from datapipe.errors import DatapipeError  # noqa: E402

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Turn your documents into training data for small language models."
)
console = Console()
err_console = Console(stderr=True)


def _taxonomy_app() -> typer.Typer:
    from datapipe.taxonomy.cli import taxonomy_app

    return taxonomy_app


def _curate_app() -> typer.Typer:
    from datapipe.curate.cli import curate_app

    return curate_app


app.add_typer(_taxonomy_app(), name="taxonomy", help="Validate and show InstructLab taxonomies (qna.yaml trees).")
app.add_typer(_curate_app(), name="curate", help="Human review in Argilla: push samples, pull decisions back.")

Target = Annotated[str, typer.Argument(help="pipeline.yaml, or a run folder (runs/<run_id>)")]


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


def _summary(target: str, wall: float | None) -> None:
    from datapipe.pipeline import store_for
    from datapipe.report import collect_summary, render_summary
    from datapipe.runs import load_target

    console.print(render_summary(collect_summary(store_for(load_target(target))), wall))


def _stage(fn: Callable[..., Any], target: str, **kwargs: Any) -> None:
    from datapipe.report import RichProgress
    from datapipe.runs import load_target

    t0 = time.time()
    try:
        cfg = load_target(target)
        with RichProgress() as progress:
            fn(cfg, progress=progress, **kwargs)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
    _summary(target, time.time() - t0)


@app.command()
def run(
    target: Target = "pipeline.yaml",
    export_format: Annotated[str | None, typer.Option("--format", help="export format")] = None,
) -> None:
    """Run extract -> chunk -> generate -> filter -> export as a Prefect flow, then print a summary."""
    from datapipe.report import RichProgress
    from datapipe.runs import load_target

    t0 = time.time()
    try:
        load_target(target)  # fail fast on a bad config, before Prefect starts
        from flows.pipeline import flow_for, set_progress

        with RichProgress() as progress:
            set_progress(progress)
            flow_for(target)(target, export_format)
    except DatapipeError as exc:
        _fail(exc)
    _summary(target, time.time() - t0)
    from datapipe.pipeline import store_for

    m = store_for(load_target(target)).read_manifest("export")
    if m:
        console.print(f"training data: [bold]{m['path']}[/] ({m['counts']['out']} rows, format {m['format']})")


@app.command()
def extract(target: Target = "pipeline.yaml") -> None:
    """Extract text from the configured sources into <run>/documents/."""
    from datapipe.pipeline import run_extract

    _stage(run_extract, target)


@app.command()
def chunk(target: Target = "pipeline.yaml") -> None:
    """Split documents into semantic chunks (<run>/chunks/)."""
    from datapipe.pipeline import run_chunk

    _stage(run_chunk, target)


@app.command()
def generate(target: Target = "pipeline.yaml") -> None:
    """Generate instruction samples from chunks with the teacher (<run>/samples/)."""
    from datapipe.pipeline import run_generate

    _stage(run_generate, target)


@app.command(name="filter")
def filter_(target: Target = "pipeline.yaml") -> None:
    """Filter samples; drops go to <run>/rejects/ with a reason (<run>/filtered/)."""
    from datapipe.pipeline import run_filter

    _stage(run_filter, target)


@app.command()
def preference(target: Target = "pipeline.yaml") -> None:
    """Build DPO preference pairs from the kept samples (<run>/preferences/)."""
    from datapipe.pipeline import run_preference

    _stage(run_preference, target)


@app.command()
def export(
    target: Target = "pipeline.yaml",
    export_format: Annotated[
        str | None, typer.Option("--format", help="chatml | sharegpt | alpaca | dpo | text")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default <run>/exports/<format>)")] = None,
    split: Annotated[
        float | None,
        typer.Option(help="share of records in train.parquet, e.g. 0.95; the rest go to validation.parquet"),
    ] = None,
    max_seq_len: Annotated[
        int | None, typer.Option("--max-seq-len", help="records with more tokens are dropped or flagged")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="target model's tokenizer: a Hugging Face model folder or a .gguf file (default: SmolLM2)"),
    ] = None,
    on_too_long: Annotated[
        str | None, typer.Option("--on-too-long", help="drop (rejects) | flag (too_long column)")
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", metavar="REPO", help="push to this Hugging Face dataset repo")
    ] = None,
    curated_only: Annotated[
        bool | None,
        typer.Option("--curated-only/--all", help="only samples reviewers accepted in Argilla (datapipe curate pull)"),
    ] = None,
) -> None:
    """Write the kept samples (dpo: the preference pairs) as parquet per split, with a dataset card and
    trainer snippets (Axolotl, LLaMA-Factory, TRL) beside them."""
    from datapipe.pipeline import run_export

    _stage(
        run_export,
        target,
        fmt=export_format,
        out=str(out) if out else None,
        split=split,
        max_seq_len=max_seq_len,
        tokenizer=str(Path(tokenizer).expanduser().resolve()) if tokenizer else None,
        on_too_long=on_too_long,
        push_to_hub=push_to_hub,
        curated_only=curated_only,
    )
    from datapipe.pipeline import store_for
    from datapipe.runs import load_target

    m = store_for(load_target(target)).read_manifest("export")
    if not m:
        return
    console.print(f"training data: [bold]{m['path']}[/] ({m['counts']['out']} rows, format {m['format']})")
    splits = m.get("splits") or {}
    if len(splits) > 1:
        console.print("splits: " + ", ".join(f"{s} {n}" for s, n in splits.items()))
    for empty in m.get("empty_splits", []):
        console.print(f"note: split {empty} has no records, so {empty}.parquet was not written", highlight=False)
    lengths, tok = m.get("token_lengths"), m.get("tokenizer") or {}
    if lengths:
        stats = ", ".join(f"{k} {lengths[k]}" for k in ("min", "median", "p95", "max"))
        line = f"token lengths ({tok.get('name')}): {stats}"
        if m.get("max_seq_len"):
            drop = m.get("on_too_long") == "drop"
            n = m["counts"]["rejected"] if drop else m.get("flagged_too_long", 0)
            line += f"; over max_seq_len {m['max_seq_len']}: {n} {'dropped' if drop else 'flagged'}"
        console.print(line, highlight=False)
    if m.get("card"):
        names = ", ".join(Path(p).name for p in [m["card"], *m.get("snippets", {}).values()])
        console.print(f"beside it: {names}", highlight=False)
    if m.get("hub"):
        console.print(f"pushed to {m['hub']}")


@app.command()
def summary(target: Target = "pipeline.yaml") -> None:
    """Print the summary of a run from its manifests."""
    try:
        _summary(target, None)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def report(
    target: Target = "pipeline.yaml",
    out: Annotated[Path | None, typer.Option(help="output HTML file (default <run>/report.html)")] = None,
) -> None:
    """Write a self-contained HTML report of a run: counts, rejects, lengths, scores, duplicates, coverage, tokens."""
    from datapipe.pipeline import store_for
    from datapipe.report.html import write_report
    from datapipe.runs import load_target

    try:
        path = write_report(store_for(load_target(target)), out)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"report: [bold]{path}[/]", highlight=False)


def main() -> None:  # pragma: no cover
    sys.exit(app())
