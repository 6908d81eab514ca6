"""`datapipe`: the command line. Subcommands mirror the stages; `run` runs them all as a Prefect flow."""

from __future__ import annotations

import json
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

from datapipe.errors import DatapipeError, PendingError  # noqa: E402

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


BUDGET_EXIT = 3  # the run stopped at its teacher budget: persisted, resumable


def _pending(target: str, exc: BaseException, wall: float | None) -> None:
    """A run or stage that ended with records pending: the summary, what is pending and why, exit 4."""
    from datapipe.pending import PENDING_EXIT

    try:
        _summary(target, wall)
    except (DatapipeError, FileNotFoundError):
        pass
    err_console.print(f"[bold yellow]pending:[/] {exc}", highlight=False)
    raise typer.Exit(PENDING_EXIT)


def _fail(exc: BaseException) -> None:
    from datapipe.teacher.budget import BudgetExceeded

    if isinstance(exc, BudgetExceeded):
        err_console.print(f"[bold yellow]stopped:[/] {exc}", highlight=False)
        raise typer.Exit(BUDGET_EXIT)
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


def _summary(target: str, wall: float | None) -> None:
    from datapipe.report import collect_summary, render_summary
    from datapipe.runs import load_target
    from datapipe.store import store_for

    console.print(render_summary(collect_summary(store_for(load_target(target))), wall))


def _stage(fn: Callable[..., Any], target: str, **kwargs: Any) -> None:
    from datapipe.report import RichProgress
    from datapipe.runs import load_target
    from datapipe.stages.teachers import run_budget_key
    from datapipe.store import run_lock
    from datapipe.teacher.budget import run_budget

    t0 = time.time()
    try:
        cfg = load_target(target)
        with run_lock(cfg.run_dir), RichProgress() as progress, run_budget(run_budget_key(cfg), cfg.budget):
            manifest = fn(cfg, progress=progress, **kwargs)
        if isinstance(manifest, dict) and "counts" in manifest:
            from datapipe.pending import check_pending

            check_pending(manifest, allow_partial=False)
    except PendingError as exc:
        _pending(target, exc, time.time() - t0)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
    _summary(target, time.time() - t0)


@app.command()
def run(
    target: Target = "pipeline.yaml",
    export_format: Annotated[str | None, typer.Option("--format", help="export format")] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="extract and chunk (no teacher), then estimate the teacher calls and tokens the run would need",
        ),
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="publish even when records are pending because the teacher was down (default: publish nothing "
            "and exit 4; re-running resumes)",
        ),
    ] = False,
) -> None:
    """Run extract -> chunk -> generate -> filter -> export -> publish as a Prefect flow, then print a summary.

    Only what changed since the last run costs teacher calls; a run that is killed, stops at its
    budget or meets a teacher outage continues where it stopped when started again with the same command."""
    from datapipe.report import RichProgress
    from datapipe.runs import load_target

    if dry_run:
        _dry_run(target)
        return
    t0 = time.time()
    try:
        load_target(target)  # fail fast on a bad config, before Prefect starts
        from datapipe.stages.runner import NullProgress
        from flows.pipeline import flow_for, set_progress

        with RichProgress() as progress:
            set_progress(progress)
            try:
                state = flow_for(target)(target, export_format, allow_partial or None, return_state=True)
            finally:
                set_progress(NullProgress())
        if state.is_failed():
            _raise_outcome(target, state)
    except PendingError as exc:
        _pending(target, exc, time.time() - t0)
    except DatapipeError as exc:
        _fail(exc)
    _summary(target, time.time() - t0)
    _print_version(target)


def _raise_outcome(target: str, state: Any) -> None:
    """A failed flow run: a stop at the budget (see last_run.json), or the exception that failed it."""
    from datapipe.runs import load_target
    from datapipe.teacher.budget import BudgetExceeded
    from flows.pipeline import LAST_RUN

    path = load_target(target).run_dir / LAST_RUN
    last = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if last.get("status") == "budget_reached":
        raise BudgetExceeded(last.get("message", "teacher budget reached"))
    if last.get("status") == "pending":
        raise PendingError(last.get("message", "records pending"), last.get("pending"))
    state.result()  # raises the exception that failed the run


def _print_version(target: str) -> None:
    from datapipe.runs import load_target
    from datapipe.store import store_for

    m = store_for(load_target(target)).read_manifest("publish")
    if not m:
        return
    docs = m.get("documents", {})
    console.print(
        f"sources: {len(docs.get('added', []))} added, {len(docs.get('changed', []))} changed, "
        f"{len(docs.get('deleted', []))} deleted, {docs.get('unchanged', 0)} unchanged since the previous version",
        highlight=False,
    )
    if m.get("new_version"):
        smp = m.get("samples", {})
        changes = f"+{smp.get('added', 0)} -{smp.get('removed', 0)} samples" if smp else ""
        console.print(f"published version [bold]{m['version']}[/] ({m['counts']['out']} samples; {changes})")
    else:
        console.print(f"training data unchanged: the latest version is still [bold]{m['version']}[/]")
    console.print(f"training data: [bold]{m['path']}[/]", highlight=False, soft_wrap=True)
    if m.get("pending"):
        counts = ", ".join(f"{stage} {n}" for stage, n in m["pending"].items())
        console.print(
            f"[bold yellow]partial:[/] records pending ({counts}) are not in this version (--allow-partial); "
            f"run again when the teacher is back",
            highlight=False,
        )


def _dry_run(target: str) -> None:
    from rich.table import Table

    from datapipe.estimate import estimate_run
    from datapipe.report import RichProgress
    from datapipe.runs import load_target
    from datapipe.stages import runner_of
    from datapipe.store import run_lock, store_for
    from datapipe.versions import current_sources, diff_sources, latest_version

    try:
        cfg = load_target(target)
        with run_lock(cfg.run_dir):
            with RichProgress() as progress:
                runner_of("extract")(cfg, progress)
                runner_of("chunk")(cfg, progress)
            est = estimate_run(cfg)
            store = store_for(cfg)
            latest = latest_version(store)
            diff = diff_sources(latest["sources"] if latest else {}, current_sources(cfg, store))
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
    since = f"since {latest['version']}" if latest else "(no version published yet)"
    console.print(
        f"sources: {len(diff.added)} added, {len(diff.changed)} changed, {len(diff.deleted)} deleted, "
        f"{len(diff.unchanged)} unchanged {since}",
        highlight=False,
    )
    sh = est["shards"]
    table = Table(
        title=f"dry run: teacher {est['teacher'].get('backend')}:{est['teacher'].get('model')}", title_justify="left"
    )
    for col in ("step", "calls", "cached", "tokens in (est.)", "tokens out (max)", "note"):
        table.add_column(col, justify="left" if col in ("step", "note") else "right")
    for row in [*est["steps"], est["total"]]:
        calls = str(row["calls"]) if row["exact"] else f"<= {row['calls']}"
        figures = [calls, str(row["cached"]), str(row["input_tokens"]), str(row["output_tokens"])]
        if row["step"] in est["not_estimated"]:
            figures = ["?"] * 4  # the kind registers no estimator: unknown, not free
        table.add_row(row["step"], *figures, row["note"])
    console.print(table)
    if est["not_estimated"]:
        console.print(
            f"not estimated (no estimator registered): {', '.join(est['not_estimated'])}; the total leaves them out",
            highlight=False,
        )
    console.print(
        f"generate shards: {sh['to_generate']} to generate, {sh['reused']} already done; "
        f"estimated teacher tokens: {est['tokens']}" + (f", cost {est['cost']:.4f}" if est["cost"] is not None else ""),
        highlight=False,
    )
    b = est["budget"]
    if b["max_tokens"] is not None or b["max_cost"] is not None:
        verdict = "may stop at the budget" if b["may_stop_at_budget"] else "fits the budget"
        console.print(f"budget: max_tokens={b['max_tokens']} max_cost={b['max_cost']}: {verdict}", highlight=False)
    console.print("nothing was sent to the teacher; run without --dry-run to generate", highlight=False)


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="pipeline.yaml with a schedule: section")] = "pipeline.yaml",
) -> None:
    """Register the pipeline and export deployments (cron from the schedule: section) and run their flow runs.

    Talks to the Prefect API in PREFECT_API_URL (e.g. `prefect server start`, whose UI shows the runs);
    stops with Ctrl-C."""
    from datapipe.runs import load_target

    try:
        cfg = load_target(target)
        from prefect import serve as prefect_serve

        from flows.deployments import runner_deployments

        deployments = runner_deployments(cfg, str(Path(target).resolve()))
    except DatapipeError as exc:
        _fail(exc)
    sch = cfg.schedule
    console.print(
        f"serving datapipe-pipeline/{cfg.run_id} (cron {sch.cron or 'none'}) and datapipe-export/{cfg.run_id} "
        f"(cron {sch.export_cron or 'none'}), time zone {sch.timezone}",
        highlight=False,
    )
    prefect_serve(*deployments, print_starting_message=False)


@app.command()
def deployments(
    target: Annotated[str, typer.Argument(help="pipeline.yaml with a schedule: section")] = "pipeline.yaml",
    write: Annotated[Path | None, typer.Option(help="write this prefect.yaml instead of printing it")] = None,
    work_pool: Annotated[str, typer.Option("--work-pool", help="process work pool the deployments use")] = "datapipe",
) -> None:
    """Print (or write) the prefect.yaml for `prefect deploy --all`, from the pipeline.yaml's schedule: section."""
    from datapipe.config import load_config
    from flows.deployments import config_path_for, prefect_yaml

    try:
        cfg = load_config(target)
        text = prefect_yaml(cfg, config_path_for(Path(target), Path.cwd()), work_pool)
    except DatapipeError as exc:
        _fail(exc)
    if write is None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    else:
        write.write_text(text, encoding="utf-8")
        console.print(f"wrote {write}", highlight=False)


@app.command()
def versions(target: Target = "pipeline.yaml") -> None:
    """List the published versions of a run's training data (the latest last)."""
    from rich.table import Table

    from datapipe.runs import load_target
    from datapipe.store import store_for
    from datapipe.versions import list_versions, read_version

    try:
        store = store_for(load_target(target))
    except DatapipeError as exc:
        _fail(exc)
    names = list_versions(store)
    if not names:
        console.print(f"no version published yet in {store.root}: run `datapipe run`", highlight=False)
        return
    table = Table(title=f"versions of {store.root}", title_justify="left")
    for col in ("version", "created", "samples", "added", "removed", "docs +/~/-", "path"):
        table.add_column(col, justify="left" if col in ("version", "created", "path") else "right")
    for name in names:
        v = read_version(store, name)
        d, smp = v["documents"], v["samples"]
        docs = f"{len(d['added'])}/{len(d['changed'])}/{len(d['deleted'])}"
        label = name + (" (latest)" if name == names[-1] else "")
        table.add_row(label, v["created"], str(smp["total"]), str(smp["added"]), str(smp["removed"]), docs, v["path"])
    console.print(table)
    console.print(f"latest: {names[-1]} ({store.root / 'versions' / 'latest'})", highlight=False, soft_wrap=True)


@app.command()
def extract(target: Target = "pipeline.yaml") -> None:
    """Extract text from the configured sources into <run>/documents/."""
    from datapipe.stages import runner_of

    _stage(runner_of("extract"), target)


@app.command()
def chunk(target: Target = "pipeline.yaml") -> None:
    """Split documents into semantic chunks (<run>/chunks/)."""
    from datapipe.stages import runner_of

    _stage(runner_of("chunk"), target)


@app.command()
def generate(target: Target = "pipeline.yaml") -> None:
    """Generate instruction samples from chunks with the teacher (<run>/samples/)."""
    from datapipe.stages import runner_of

    _stage(runner_of("generate"), target)


@app.command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(help="a .jsonl or .parquet file of samples made elsewhere")],
    target: Target = "pipeline.yaml",
    fmt: Annotated[str, typer.Option("--format", help="chatml | sharegpt | alpaca | dpo")] = "chatml",
    context_field: Annotated[
        str | None,
        typer.Option("--context-field", metavar="NAME", help="row field holding the source text the answer must match"),
    ] = None,
) -> None:
    """Bring samples made elsewhere into the run (<run>/imported/), so filter, curate and export work on them.

    Malformed rows become rejects naming their line; importing the same file again changes nothing."""
    from datapipe.stages import runner_of

    _stage(runner_of("import"), target, path=file, fmt=fmt, context_field=context_field)


@app.command(name="filter")
def filter_(target: Target = "pipeline.yaml") -> None:
    """Filter samples; drops go to <run>/rejects/ with a reason (<run>/filtered/)."""
    from datapipe.stages import runner_of

    _stage(runner_of("filter"), target)


@app.command()
def preference(target: Target = "pipeline.yaml") -> None:
    """Build DPO preference pairs from the kept samples (<run>/preferences/)."""
    from datapipe.stages import runner_of

    _stage(runner_of("preference"), target)


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
    reidentify: Annotated[
        bool,
        typer.Option(
            "--reidentify",
            help="also write a copy with pseudonyms replaced by the real values (<out>-reidentified/, owner-only; "
            "internal use; needs privacy.mode: pseudonymize)",
        ),
    ] = False,
) -> None:
    """Write the kept samples (dpo: the preference pairs) as parquet per split, with a dataset card and
    trainer snippets (Axolotl, LLaMA-Factory, TRL) beside them."""
    from datapipe.stages import runner_of

    _stage(
        runner_of("export"),
        target,
        fmt=export_format,
        out=str(out) if out else None,
        split=split,
        max_seq_len=max_seq_len,
        tokenizer=str(Path(tokenizer).expanduser().resolve()) if tokenizer else None,
        on_too_long=on_too_long,
        push_to_hub=push_to_hub,
        curated_only=curated_only,
        reidentify=reidentify,
    )
    from datapipe.runs import load_target
    from datapipe.store import store_for

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
    if priv := m.get("privacy"):
        leaks = priv.get("real_values_in_export") or {}
        console.print(
            "privacy: real values in the export: " + (", ".join(f"{n} {e}" for e, n in leaks.items()) or "none"),
            highlight=False,
        )
        for path in (priv.get("reidentified") or {}).values():
            console.print(f"re-identified copy (internal use only): {path}", highlight=False)


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
    from datapipe.report.html import write_report
    from datapipe.runs import load_target
    from datapipe.store import store_for

    try:
        path = write_report(store_for(load_target(target)), out)
    except (DatapipeError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"report: [bold]{path}[/]", highlight=False)


def main() -> None:  # pragma: no cover
    sys.exit(app())
