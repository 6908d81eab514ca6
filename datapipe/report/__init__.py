"""Progress display and the closing summary of a run (counts per stage, rejects, tokens, time)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from datapipe.reasons import meaning
from datapipe.store import STAGES, RunStore


class RichProgress:
    """One progress bar per stage, shown while a run works."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Sent to another process (a Ray worker pickles the flow with its globals), the display stays
        here: the copy is a NullProgress."""
        from datapipe.stages.runner import NullProgress

        return (NullProgress, ())

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, stage: str, total: int) -> None:
        if stage in self._tasks:
            self.progress.reset(self._tasks[stage], total=total)
        else:
            self._tasks[stage] = self.progress.add_task(stage, total=total)

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self._tasks and n:
            self.progress.advance(self._tasks[stage], n)

    def done(self, stage: str) -> None:
        if stage in self._tasks:
            task = self.progress.tasks[self._tasks[stage]]
            self.progress.update(self._tasks[stage], completed=task.total)


def collect_summary(store: RunStore) -> dict[str, Any]:
    """Figures for the summary, read back from the run's manifests (so any run can be summarised)."""
    stages = []
    reasons: Counter[tuple[str, str]] = Counter()
    teacher: list[tuple[str, dict[str, Any]]] = []
    pending: Counter[tuple[str, str]] = Counter()
    question_dedup: dict[str, int] | None = None
    privacy: list[tuple[str, dict[str, Any]]] = []
    for stage in STAGES:
        m = store.read_manifest(stage)
        if m is None:
            continue
        if "question_dedup" in m:
            question_dedup = m["question_dedup"]
        c = m["counts"]
        stages.append(
            {
                "stage": stage,
                "in": c["in"],
                "out": c["out"],
                "rejected": c.get("rejected", 0),
                "shards": c.get("shards"),
                "reused": c.get("shards_reused"),
                "seconds": m.get("seconds", 0.0),
            }
        )
        for reason, n in m.get("rejects_by_reason", {}).items():
            reasons[(stage, reason)] += n
        for reason, n in m.get("pending_by_reason", {}).items():
            pending[(stage, reason)] += n
        if "teacher" in m:
            teacher.append((stage, m["teacher"]))
        if m.get("privacy"):
            privacy.append((stage, m["privacy"]))
    preference = None
    if store.read_manifest("preference") is not None:
        from datapipe.records import PreferencePair
        from datapipe.report.preference import preference_stats, reject_verdicts

        preference = preference_stats(
            store.iter_records("preference", PreferencePair),
            (reject_verdicts(r) for r in store.iter_rejects("preference")),
        )
    return {
        "preference": preference,
        "run": str(store.root),
        "stages": stages,
        "rejects": reasons,
        "teacher": teacher,
        "question_dedup": question_dedup,
        "pending": pending,
        "privacy": privacy,
    }


def tokens_per_kept_line(summary: dict[str, Any]) -> str | None:
    """Teacher tokens (in + out, every stage, this run's calls) per sample the filter kept (``none`` when it
    kept none: the line is there whatever the data, so the summary keeps one shape); None without a filter
    stage or a teacher."""
    kept = next((s["out"] for s in summary["stages"] if s["stage"] == "filter"), None)
    if not summary["teacher"] or kept is None:
        return None
    tokens = sum(t.get("input_tokens", 0) + t.get("output_tokens", 0) for _, t in summary["teacher"])
    per = f"{tokens / kept:.0f}" if kept else "none"
    return f"teacher tokens per kept sample: {per} ({tokens} tokens / {kept} kept samples)"


def privacy_line(stage: str, p: dict[str, Any]) -> str:
    """``generate: privacy pseudonymize, detections PERSON 12, EMAIL_ADDRESS 3`` (export: real values found)."""
    if "real_values_in_export" in p:
        found = p["real_values_in_export"]
        return f"{stage}: privacy {p['mode']}, real values in the export: " + (
            ", ".join(f"{e} {n}" for e, n in found.items()) or "none"
        )
    found = p.get("detections") or {}
    return f"{stage}: privacy {p['mode']}, detections " + (", ".join(f"{e} {n}" for e, n in found.items()) or "none")


def teacher_faults_line(stage: str, t: dict[str, Any]) -> str | None:
    """One line on what went wrong with the teacher in a stage and how datapipe coped; None when nothing did.

    e.g. ``generate: faults HTTP 429: 3, timeout: 1; Retry-After honoured 3 times (max 1.0 s);
    concurrency 4 -> 1 (min) -> 3 (final), 2 decreases, 3 increases``
    """
    faults = t.get("faults") or {}
    conc = t.get("concurrency") or {}
    changed = conc.get("decreases", 0) or conc.get("increases", 0)
    if not faults and not changed:
        return None
    bits = []
    if faults:
        bits.append("faults " + ", ".join(f"{k}: {n}" for k, n in sorted(faults.items(), key=lambda kv: -kv[1])))
    if n_waits := t.get("retry_after_count", 0):
        bits.append(f"Retry-After honoured {n_waits} times (max {t.get('retry_after_max_s', 0.0):.1f} s)")
    if changed:
        bits.append(
            f"concurrency {conc['start']} -> {conc['min']} (min) -> {conc['final']} (final), "
            f"{conc['decreases']} decreases, {conc['increases']} increases"
        )
    return f"{stage}: " + "; ".join(bits)


def render_summary(summary: dict[str, Any], wall_seconds: float | None = None) -> Group:
    counts = Table(title=f"datapipe run {summary['run']}", title_justify="left")
    for col in ("stage", "in", "out", "rejected", "shards (reused)", "seconds"):
        counts.add_column(col, justify="left" if col == "stage" else "right")
    for s in summary["stages"]:
        shards = "" if s["shards"] is None else f"{s['shards']} ({s['reused']})"
        counts.add_row(s["stage"], str(s["in"]), str(s["out"]), str(s["rejected"]), shards, f"{s['seconds']:.1f}")
    parts: list[Any] = [counts]
    if summary["rejects"]:
        rej = Table(title="rejects by reason", title_justify="left")
        rej.add_column("stage")
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        rej.add_column("meaning")
        for (stage, reason), n in sorted(summary["rejects"].items()):
            rej.add_row(stage, reason, str(n), meaning(reason))
        parts.append(rej)
    if summary.get("pending"):
        pend = Table(title="pending: not rejected, asked again by the next run", title_justify="left")
        pend.add_column("stage")
        pend.add_column("reason")
        pend.add_column("count", justify="right")
        pend.add_column("meaning")
        for (stage, reason), n in sorted(summary["pending"].items()):
            pend.add_row(stage, reason, str(n), meaning(reason))
        parts.append(pend)
    if summary["teacher"]:
        first = summary["teacher"][0][1]
        tt = Table(title=f"teacher {first.get('backend')}:{first.get('model')}", title_justify="left")
        cols = ("requests", "calls", "cache_hits", "input_tokens", "output_tokens", "retries", "failures")
        labels = ("requests", "calls", "cached", "tokens in", "tokens out", "retries", "failed")
        tt.add_column("stage")
        for label in labels:
            tt.add_column(label, justify="right")
        for stage, t in summary["teacher"]:
            tt.add_row(stage, *(str(t.get(k, 0)) for k in cols))
        if len(summary["teacher"]) > 1:
            tt.add_row("total", *(str(sum(t.get(k, 0) for _, t in summary["teacher"])) for k in cols))
        parts.append(tt)
        parts.extend(line for stage, t in summary["teacher"] if (line := teacher_faults_line(stage, t)))
        parts.extend(f"{st}: stopped early: {t['unreachable']}" for st, t in summary["teacher"] if t.get("unreachable"))
    if line := tokens_per_kept_line(summary):
        parts.append(line)
    if qd := summary.get("question_dedup"):
        parts.append(
            f"near-duplicate questions dropped before answering: {qd['dropped']} "
            f"(~{qd['answer_tokens_saved']} answer tokens saved)"
        )
    parts.extend(privacy_line(stage, p) for stage, p in summary.get("privacy", []))
    if summary.get("preference"):
        from datapipe.report.preference import preference_lines

        parts.extend(preference_lines(summary["preference"]))
    if wall_seconds is not None:
        parts.append(f"wall time: {wall_seconds:.1f} s")
    return Group(*parts)
