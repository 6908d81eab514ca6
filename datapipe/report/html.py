"""`datapipe report`: one self-contained HTML file that shows what a run made and what it dropped.

Everything is read back through :class:`~datapipe.store.RunStore` (manifests, records,
rejects), so any run folder can be reported on, finished or not. The file has no external
references: plots are matplotlib PNGs inlined as base64 and the styles are inline, so the
report can be mailed, archived next to the training data or opened offline. A missing stage
or an empty view renders a "no data" note instead of failing, because a report is most
wanted exactly when a run went wrong.

The figures the report shows are also embedded as JSON (``<script type="application/json"
id="datapipe-report-data">``) so tools and tests can read them without parsing the tables.
"""

from __future__ import annotations

import base64
import html
import io
import json
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import ValidationError
from upath import UPath

from datapipe import fsio
from datapipe.reasons import meaning, reason_key, split_reason
from datapipe.records import Chunk, Document, PreferencePair, Sample
from datapipe.report.examples import Picker, pair_example, reject_example, render_example, sample_example
from datapipe.store import STAGES, RunStore

UNITS = {
    "extract": "documents",
    "chunk": "chunks",
    "generate": "samples",
    "filter": "kept samples",
    "preference": "preference pairs",
    "curate": "reviewed records",
    "export": "exported rows",
    "publish": "samples in the version",
}
TEACHER_COLUMNS = (
    ("requests", "requests"),
    ("calls", "calls"),
    ("cache_hits", "cache hits"),
    ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"),
    ("retries", "retries"),
    ("failures", "failures"),
    ("seconds_in_calls", "seconds in calls"),
)
KEPT, DROPPED, ALL = "#2a9d8f", "#e76f51", "#8d99ae"
STAGE_COLOURS = {
    "extract": "#264653",
    "chunk": "#457b9d",
    "generate": "#e9c46a",
    "filter": "#f4a261",
    "preference": "#e76f51",
    "curate": "#6d597a",
    "export": "#8d99ae",
    "publish": "#2a9d8f",
}
MAX_BARS = 40
MAX_ROWS = 200


def reason_code(reason: str) -> str:
    """A reject reason without the record id it points at (``duplicate_of:<id>`` -> ``duplicate_of``).

    Other suffixes (``contaminated:gsm8k``, ``wrong_language:de``) say something about the
    data and are kept (:func:`datapipe.reasons.reason_key`).
    """
    return reason_key(reason)


@dataclass
class SampleStats:
    """The few fields of a sample the report plots; full records would not fit in memory for big runs."""

    id: str
    kind: str
    instruction: str
    instruction_chars: int
    response_chars: int
    source_path: str
    taxonomy_path: str | None
    scores: dict[str, float]
    tokens: dict[str, tuple[int, int]]  # step -> (input, output) tokens of its teacher calls

    @classmethod
    def of(cls, s: Sample) -> SampleStats:
        tokens: dict[str, tuple[int, int]] = {}
        for call in s.provenance.teacher_calls:
            i, o = tokens.get(call.step, (0, 0))
            tokens[call.step] = (i + call.input_tokens, o + call.output_tokens)
        return cls(
            id=s.id,
            kind=s.kind,
            instruction=s.instruction,
            instruction_chars=len(s.instruction),
            response_chars=len(s.response),
            source_path=s.provenance.source_path,
            taxonomy_path=s.provenance.taxonomy_path,
            scores=dict(s.scores),
            tokens=tokens,
        )


@dataclass
class RejectStats:
    stage: str
    record_id: str
    reason: str
    source_path: str | None


@dataclass
class RunData:
    """What the report needs from a run, gathered in one pass over its stages."""

    root: UPath
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    documents: list[tuple[str, str, str | None]] = field(default_factory=list)  # id, source_path, taxonomy
    chunk_tokens: list[int] = field(default_factory=list)
    chunks_per_source: Counter[str] = field(default_factory=Counter)
    generated: list[SampleStats] = field(default_factory=list)
    kept: list[SampleStats] = field(default_factory=list)
    dropped_by_filter: list[SampleStats] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    rejects: list[RejectStats] = field(default_factory=list)
    pair_reject_verdicts: list[list[dict[str, Any]]] = field(default_factory=list)  # pairwise verdicts, preference
    examples: Picker = field(default_factory=Picker)  # groups "kept:<kind>", "reject:<stage>:<reason code>"
    problems: list[str] = field(default_factory=list)


def _records(store: RunStore, data: RunData, stage: str, record: type[Any]) -> Iterator[Any]:
    """A stage's records, or nothing (with a note) when the stage has not run or a shard is unreadable."""
    if stage not in data.manifests:
        return
    try:
        yield from store.iter_records(stage, record)
    except (OSError, pa.ArrowException, ValidationError, KeyError) as exc:
        data.problems.append(f"stage {stage}: its records could not all be read ({type(exc).__name__}: {exc})")


def _payload_sample(payload: str) -> Sample | None:
    """The sample a filter reject carries: the payload itself, or its ``sample`` (judge rejects)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("sample"), dict):
        obj = obj["sample"]
    try:
        return Sample.model_validate(obj)
    except ValidationError:
        return None


def collect(store: RunStore) -> RunData:
    """Read the manifests, records and rejects of every stage that has run."""
    from datapipe.report.preference import reject_verdicts

    data = RunData(root=store.root)
    for stage in STAGES:
        m = store.read_manifest(stage)
        if m is not None:
            data.manifests[stage] = m
    for d in _records(store, data, "extract", Document):
        data.documents.append((d.id, d.source_path, d.taxonomy_path))
    for c in _records(store, data, "chunk", Chunk):
        data.chunk_tokens.append(c.n_tokens)
        data.chunks_per_source[c.source_path] += 1
    data.generated = [SampleStats.of(s) for s in _records(store, data, "generate", Sample)]
    for s in _records(store, data, "filter", Sample):
        data.kept.append(SampleStats.of(s))
        data.examples.offer(f"kept:{s.kind}", s.id, lambda s=s: sample_example(s))
    data.pairs = list(_records(store, data, "preference", PreferencePair))
    for p in data.pairs:
        data.examples.offer("kept:preference", p.id, lambda p=p: pair_example(p))
    for stage, m in data.manifests.items():
        if "shards" not in m:
            continue
        try:
            for r in store.iter_rejects(stage):
                data.rejects.append(RejectStats(stage, r.record_id, r.reason, r.source_path))
                if stage == "preference" and (verdicts := reject_verdicts(r)):
                    data.pair_reject_verdicts.append(verdicts)
                data.examples.offer(
                    f"reject:{stage}:{reason_code(r.reason)}",
                    r.record_id,
                    lambda r=r: reject_example(r, _payload_sample(r.payload) if r.payload else None),
                )
                if stage == "filter":
                    dropped = _payload_sample(r.payload)
                    if dropped is not None:
                        data.dropped_by_filter.append(SampleStats.of(dropped))
        except (OSError, pa.ArrowException, ValidationError) as exc:
            data.problems.append(f"stage {stage}: its rejects could not all be read ({type(exc).__name__}: {exc})")
    return data


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _figure(width: float = 9.0, height: float = 3.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", alpha=0.25)
    ax.set_axisbelow(True)
    return fig, ax


def _nodata(why: str) -> str:
    return f'<p class="nodata">no data: {html.escape(why)}</p>'


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """An HTML table; numbers are right-aligned and thousands-separated."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def _short_paths(paths: Iterable[str]) -> dict[str, str]:
    """The shortest path suffix that still tells each source apart, so chart labels stay readable."""
    unique = sorted(set(paths))
    parts = {p: Path(p).parts for p in unique}
    out = {}
    for p in unique:
        n = 1
        while n < len(parts[p]) and sum(1 for q in unique if parts[q][-n:] == parts[p][-n:]) > 1:
            n += 1
        label = "/".join(parts[p][-n:])
        out[p] = label if len(label) <= 48 else "…" + label[-47:]
    return out


def _hist(ax: Axes, series: list[tuple[str, list[float], str]], bins: int = 30) -> None:
    """Overlaid histograms over shared bins.

    Integer data on a small range (judge ratings) gets one bar per value over at least 1-5,
    data within 0-1 (similarities, ratios) is shown over all of 0-1, so the scale is visible.
    """
    values = [v for _, vs, _ in series for v in vs]
    if not values:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = min(values), max(values)
    rwidth = None
    if all(float(v).is_integer() for v in values) and hi - lo <= 12:
        if 0 <= lo and hi <= 5:
            lo, hi = min(lo, 1.0), 5.0
        edges = [lo - 0.5 + i for i in range(int(hi - lo) + 2)]
        rwidth = 0.8
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    elif 0 <= lo and hi <= 1:
        edges = [i / 20 for i in range(21)]
    else:
        width = (hi - lo) / bins if hi > lo else 1.0
        edges = [lo + i * width for i in range(bins + 1)] if hi > lo else [lo - 0.5, lo + 0.5]
    for label, vs, colour in series:
        if vs:
            ax.hist(
                vs,
                bins=edges,
                alpha=0.65,
                label=f"{label} (n={len(vs)})",
                color=colour,
                edgecolor="white",
                rwidth=rwidth,
            )
    ax.legend(frameon=False, fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


@dataclass
class Section:
    id: str
    title: str
    intro: str
    body: list[str]


def stages_figure(stages: list[dict[str, Any]]) -> Figure:
    """Bars of records in, out and rejected per stage. Each tick label is the stage over its unit, the unit
    wrapped to short lines and the figure widened with the stage count, so labels never run into each other."""
    fig, ax = _figure(max(9.0, 1.3 * len(stages) + 1.0), 3.6)
    x = list(range(len(stages)))
    w = 0.27
    for off, key, colour in ((-w, "in", ALL), (0.0, "out", KEPT), (w, "rejected", DROPPED)):
        bars = ax.bar([i + off for i in x], [s[key] for s in stages], w, label=key, color=colour)
        ax.bar_label(bars, fontsize=8, padding=1)
    labels = [s["stage"] + "\n" + textwrap.fill(f"({s['unit']})", 12) for s in stages]
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("records")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=9)
    return fig


def section_stages(data: RunData, facts: dict[str, Any]) -> Section:
    rows: list[list[Any]] = []
    stages: list[dict[str, Any]] = []
    for stage in STAGES:
        m = data.manifests.get(stage)
        if m is None:
            continue
        c = m.get("counts", {})
        row = {
            "stage": stage,
            "unit": UNITS.get(stage, "records"),
            "in": int(c.get("in", 0)),
            "out": int(c.get("out", 0)),
            "rejected": int(c.get("rejected", 0)),
            "seconds": float(m.get("seconds", 0.0)),
        }
        stages.append(row)
        rows.append([row["stage"], row["unit"], row["in"], row["out"], row["rejected"], row["seconds"]])
    facts["stages"] = stages
    missing = [s for s in STAGES if s not in data.manifests and s != "import"]  # import is optional
    body: list[str] = []
    if not stages:
        body.append(_nodata("this run has no stage manifests yet: run `datapipe run` or a stage command first"))
        return Section("stages", "Records per stage", "", body)
    body.append(_img(stages_figure(stages), "records in, out and rejected per stage"))
    body.append(_table(["stage", "out are", "in", "out", "rejected", "seconds"], rows))
    if missing:
        body.append(f'<p class="note">stages that have not run: {html.escape(", ".join(missing))}</p>')
    return Section(
        "stages",
        "Records per stage",
        "Counts from each stage's manifest: what came in, what went on, what was rejected (every reject is kept "
        "in rejects/ with its reason).",
        body,
    )


def section_rejects(data: RunData, facts: dict[str, Any]) -> Section:
    counts: Counter[tuple[str, str]] = Counter()
    for stage, m in data.manifests.items():
        for reason, n in m.get("rejects_by_reason", {}).items():
            counts[(stage, reason_code(reason))] += int(n)
    facts["rejects_by_reason"] = {
        stage: {r: n for (s, r), n in sorted(counts.items()) if s == stage} for stage in {s for s, _ in counts}
    }
    intro = "Rejects per stage and reason, from the manifests (duplicate reasons are counted without their target id)."
    if not counts:
        return Section("rejects", "Rejects by reason", intro, [_nodata("no stage rejected anything")])
    ordered = [(s, r, counts[(s, r)]) for s in STAGES for r in sorted(r for st, r in counts if st == s)]
    fig, ax = _figure(9, 0.8 + 0.32 * len(ordered))
    labels = [f"{s}: {r}" for s, r, _ in ordered][::-1]
    bars = ax.barh(
        labels, [n for _, _, n in ordered][::-1], color=[STAGE_COLOURS.get(s, ALL) for s, _, _ in ordered][::-1]
    )
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xlabel("rejected records")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="y", labelsize=9)
    return Section(
        "rejects",
        "Rejects by reason",
        intro,
        [
            _img(fig, "rejects by stage and reason"),
            _table(["stage", "reason", "count", "meaning"], [(s, r, n, meaning(r)) for s, r, n in ordered]),
        ],
    )


def section_lengths(data: RunData, facts: dict[str, Any]) -> Section:
    body: list[str] = []
    facts["lengths"] = {"samples": len(data.generated), "kept": len(data.kept), "chunks": len(data.chunk_tokens)}
    samples = data.generated or data.kept
    if samples:
        fig = Figure(figsize=(10, 3.4))
        axes = fig.subplots(1, 2)
        for ax, attr, title in zip(
            axes, ("instruction_chars", "response_chars"), ("instruction (chars)", "response (chars)"), strict=True
        ):
            ax.spines[["top", "right"]].set_visible(False)
            series = [("generated", [float(getattr(s, attr)) for s in data.generated], ALL)]
            if "filter" in data.manifests:
                series.append(("kept", [float(getattr(s, attr)) for s in data.kept], KEPT))
            _hist(ax, series)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("samples")
        body.append(_img(fig, "instruction and response length distributions"))
    else:
        body.append(_nodata("no generated samples (stage generate has not run or produced nothing)"))
    if data.chunk_tokens:
        fig, ax = _figure(9, 3.0)
        _hist(ax, [("chunks", [float(t) for t in data.chunk_tokens], STAGE_COLOURS["chunk"])])
        ax.set_xlabel("tokens per chunk (embedding model tokenizer)")
        ax.set_ylabel("chunks")
        body.append(_img(fig, "chunk token distribution"))
        ts = sorted(data.chunk_tokens)
        body.append(
            f'<p class="note">{len(ts):,} chunks; tokens min {ts[0]:,}, median {ts[len(ts) // 2]:,}, max {ts[-1]:,}</p>'
        )
    else:
        body.append(_nodata("no chunks (stage chunk has not run or produced nothing)"))
    return Section(
        "lengths",
        "Length distributions",
        "Instruction and response lengths of all generated samples and of the samples the filter kept; chunk sizes "
        "in tokens.",
        body,
    )


def section_scores(data: RunData, facts: dict[str, Any]) -> Section:
    body: list[str] = []
    keys = sorted({k for s in (*data.kept, *data.dropped_by_filter) for k in s.scores})
    facts["scores"] = {}
    if keys:
        rows = (len(keys) + 1) // 2
        fig = Figure(figsize=(10, 2.9 * rows), layout="constrained")
        axes = fig.subplots(rows, 2, squeeze=False).flatten()
        for ax, key in zip(axes, keys, strict=False):
            kept = [s.scores[key] for s in data.kept if key in s.scores]
            dropped = [s.scores[key] for s in data.dropped_by_filter if key in s.scores]
            facts["scores"][key] = {"kept": len(kept), "rejected": len(dropped)}
            ax.spines[["top", "right"]].set_visible(False)
            _hist(ax, [("kept", kept, KEPT), ("rejected", dropped, DROPPED)])
            ax.set_title(key, fontsize=10)
            ax.set_ylabel("samples")
        for ax in axes[len(keys) :]:
            ax.set_visible(False)
        body.append(_img(fig, "score histograms: " + ", ".join(keys)))
    else:
        body.append(_nodata("no sample carries a score (the judge scores only the kinds in filter.judge.kinds)"))
    if data.pairs:
        facts["scores"]["preference"] = {"pairs": len(data.pairs)}
        fig = Figure(figsize=(10, 3.2))
        left, right = fig.subplots(1, 2)
        for ax in (left, right):
            ax.spines[["top", "right"]].set_visible(False)
        _hist(
            left,
            [
                ("chosen", [p.chosen_score for p in data.pairs], KEPT),
                ("rejected", [p.rejected_score for p in data.pairs], DROPPED),
            ],
        )
        left.set_title("preference pairs: judge score", fontsize=10)
        left.set_ylabel("pairs")
        by_source: dict[str, list[float]] = defaultdict(list)
        for p in data.pairs:
            for c in p.candidates:
                if c.score is not None:
                    by_source[c.source].append(c.score)
        palette = [STAGE_COLOURS["generate"], STAGE_COLOURS["extract"], STAGE_COLOURS["preference"], ALL]
        if by_source:
            _hist(right, [(src, by_source[src], palette[i % len(palette)]) for i, src in enumerate(sorted(by_source))])
        right.set_title("candidate scores by source", fontsize=10)
        right.set_ylabel("candidates")
        body.append(_img(fig, "preference pair score histograms"))
        margins = sorted(p.margin for p in data.pairs)
        body.append(
            f'<p class="note">{len(margins):,} preference pairs; margin min {margins[0]:.1f}, '
            f"median {margins[len(margins) // 2]:.1f}, max {margins[-1]:.1f}</p>"
        )
        body.append(_preference_signal(data, facts))
    elif "preference" in data.manifests:
        body.append(_nodata("the preference stage made no pairs"))
        body.append(_preference_signal(data, facts))  # what the pairwise check saw, pairs or not
    return Section(
        "scores",
        "Judge scores",
        "Scores the filter stage gave samples (kept and rejected), and the rubric judge's scores of preference pairs.",
        body,
    )


def _preference_signal(data: RunData, facts: dict[str, Any]) -> str:
    """Margin distribution, position-consistency rate and longer-wins rate of the preference pairs."""
    from datapipe.report.preference import pct, preference_stats

    stats = preference_stats(data.pairs, data.pair_reject_verdicts)
    facts["preference_signal"] = stats
    rows = [
        ("judged pairs", str(stats["pairs"])),
        ("hard negatives (synthetic)", str(stats["hard_negatives"])),
        ("margin distribution", ", ".join(f"{m}: {n}" for m, n in stats["margins"].items()) or "none"),
        (
            "position consistency (A/B = B/A)",
            f"{stats['position_consistent']}/{stats['pairwise_checked']} ({pct(stats['position_consistency_rate'])})",
        ),
        (
            "longer answer chosen",
            f"{stats['longer_won']}/{stats['length_differs']} ({pct(stats['longer_wins_rate'])})",
        ),
        ("chosen from", ", ".join(f"{k} {n}" for k, n in sorted(stats["chosen_by_source"].items()))),
        ("rejected from", ", ".join(f"{k} {n}" for k, n in sorted(stats["rejected_by_source"].items()))),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<h3>Preference signal</h3><table class="preference-signal">{cells}</table>'


def section_duplicates(data: RunData, facts: dict[str, Any]) -> Section:
    clusters: Counter[tuple[str, str, str]] = Counter()  # (stage, kind, representative id) -> duplicates
    for r in data.rejects:
        head, target = split_reason(r.reason)
        if target and reason_key(r.reason) == head:  # the argument is a record id: the cluster's representative
            clusters[(r.stage, head, target)] += 1
    sizes: dict[str, Counter[int]] = defaultdict(Counter)
    for (stage, kind, _), n in clusters.items():
        sizes[f"{stage}: {kind}"][n + 1] += 1
    facts["duplicates"] = {
        "clusters": len(clusters),
        "duplicates": sum(clusters.values()),
        "sizes": {k: dict(sorted(v.items())) for k, v in sorted(sizes.items())},
    }
    intro = (
        "A cluster is a kept representative plus the records rejected as its duplicate (exact, near or semantic); "
        "its size counts both."
    )
    if not clusters:
        return Section("duplicates", "Duplicate clusters", intro, [_nodata("no record was rejected as a duplicate")])
    fig, ax = _figure(9, 3.0)
    groups = sorted(sizes)
    all_sizes = sorted({n for c in sizes.values() for n in c})
    w = 0.6 / len(groups)
    palette = [STAGE_COLOURS["extract"], STAGE_COLOURS["filter"], STAGE_COLOURS["preference"], KEPT, ALL]
    for gi, g in enumerate(groups):
        xs = [i + (gi - (len(groups) - 1) / 2) * w for i in range(len(all_sizes))]
        counts = [sizes[g][n] for n in all_sizes]
        bars = ax.bar(xs, counts, w, label=g, color=palette[gi % len(palette)])
        ax.bar_label(bars, [str(c) if c else "" for c in counts], fontsize=8, padding=1)
    ax.set_xticks(range(len(all_sizes)), [str(n) for n in all_sizes])
    ax.set_xlim(-0.8, max(len(all_sizes), 4) - 0.2)
    ax.set_xlabel("cluster size (records)")
    ax.set_ylabel("clusters")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=9)
    texts = {s.id: s.instruction for s in (*data.generated, *data.kept)}
    texts.update({doc_id: path for doc_id, path, _ in data.documents})
    rows = [
        [stage, kind, target, n + 1, _clip(texts.get(target, ""), 90)]
        for (stage, kind, target), n in clusters.most_common(20)
    ]
    return Section(
        "duplicates",
        "Duplicate clusters",
        intro,
        [
            _img(fig, "duplicate cluster sizes"),
            f'<p class="note">{len(clusters):,} clusters, {sum(clusters.values()):,} duplicates rejected; '
            "the largest:</p>",
            _table(["stage", "kind", "representative", "size", "representative text"], rows),
        ],
    )


def section_examples(data: RunData, facts: dict[str, Any]) -> Section:
    """A few kept records per kind and a few rejected ones per stage and reason, whatever reasons occur."""
    body: list[str] = []
    picks = data.examples
    kept_groups = sorted(g for g in picks.groups if g.startswith("kept:"))
    kind_order = {"instruction": 0, "qa": 1, "preference": 2}
    kept_groups.sort(key=lambda g: (kind_order.get(g[5:], 9), g))
    stage_order = {s: i for i, s in enumerate(STAGES)}
    reject_groups = sorted(
        (g for g in picks.groups if g.startswith("reject:")),
        key=lambda g: (stage_order.get(g.split(":")[1], 99), g),
    )
    facts["examples"] = {
        "kept": {g[5:]: [e.record_id for e in picks.picked(g)] for g in kept_groups},
        "rejected": {g[7:]: [e.record_id for e in picks.picked(g)] for g in reject_groups},
    }
    body.append("<h3>Kept</h3>")
    if not kept_groups:
        body.append(_nodata("no kept samples or preference pairs yet (stage filter has not run or kept nothing)"))
    for g in kept_groups:
        shown = picks.picked(g)
        body.append(f"<h4>{html.escape(g[5:])}: {len(shown)} of {picks.totals[g]:,}</h4>")
        body.extend(render_example(e, "kept") for e in shown)
    body.append("<h3>Rejected, per stage and reason</h3>")
    if not reject_groups:
        body.append(_nodata("no stage rejected anything"))
    for g in reject_groups:
        _, stage, reason = g.split(":", 2)
        shown = picks.picked(g)
        body.append(f"<h4>{html.escape(stage)}: {html.escape(reason)} ({len(shown)} of {picks.totals[g]:,})</h4>")
        body.extend(render_example(e, "rejected") for e in shown)
    return Section(
        "examples",
        "Example records",
        f"Up to {picks.n} kept records per kind and {picks.n} rejected records per stage and reason, with their "
        "source and the reject's detail. They are picked by a hash of the record id, so the same run shows the "
        "same examples. Click a folded text to read all of it.",
        body,
    )


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _coverage_chart(labels: list[str], series: list[tuple[str, list[int], str]], unit: str, alt: str) -> str:
    fig, ax = _figure(9, 0.9 + 0.3 * len(labels))
    h = 0.8 / len(series)
    for si, (name, values, colour) in enumerate(series):
        ys = [i + (si - (len(series) - 1) / 2) * h for i in range(len(labels))]
        bars = ax.barh(ys, values, h, label=name, color=colour)
        ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _img(fig, alt)


def section_coverage(data: RunData, facts: dict[str, Any]) -> Section:
    body: list[str] = []
    gen = Counter(s.source_path for s in data.generated)
    kept = Counter(s.source_path for s in data.kept)
    sources = sorted({p for _, p, _ in data.documents} | set(data.chunks_per_source) | set(gen) | set(kept))
    facts["coverage_sources"] = {
        p: {"chunks": data.chunks_per_source[p], "generated": gen[p], "kept": kept[p]} for p in sources
    }
    body.append("<h3>Per source document</h3>")
    if sources and (gen or data.chunks_per_source):
        short = _short_paths(sources)
        ranked = sorted(sources, key=lambda p: (-kept[p], -gen[p], -data.chunks_per_source[p], p))
        shown = ranked[:MAX_BARS]
        series = [("chunks", [data.chunks_per_source[p] for p in shown], STAGE_COLOURS["chunk"])]
        if data.generated:
            series.append(("generated samples", [gen[p] for p in shown], ALL))
        if "filter" in data.manifests:
            series.append(("kept samples", [kept[p] for p in shown], KEPT))
        body.append(_coverage_chart([short[p] for p in shown], series, "records", "coverage per source document"))
        uncovered = [p for p in sources if kept[p] == 0] if "filter" in data.manifests else []
        note = f"{len(sources):,} source documents"
        if len(sources) > MAX_BARS:
            note += f" (the chart shows the {MAX_BARS} best covered; the table lists all)"
        if "filter" in data.manifests:
            note += f"; {len(uncovered):,} have no kept sample"
        body.append(f'<p class="note">{html.escape(note)}</p>')
        rows = [[short[p], data.chunks_per_source[p], gen[p], kept[p]] for p in ranked[:MAX_ROWS]]
        body.append(_table(["source", "chunks", "generated", "kept"], rows))
    else:
        body.append(_nodata("no chunks or samples with a source document yet"))
    body.append("<h3>Per taxonomy leaf</h3>")
    leaf_gen = Counter(s.taxonomy_path for s in data.generated if s.taxonomy_path)
    leaf_kept = Counter(s.taxonomy_path for s in data.kept if s.taxonomy_path)
    leaves = sorted(set(leaf_gen) | set(leaf_kept))
    facts["coverage_leaves"] = {leaf: {"generated": leaf_gen[leaf], "kept": leaf_kept[leaf]} for leaf in leaves}
    if leaves:
        shown = leaves[:MAX_BARS]
        series = [("generated samples", [leaf_gen[leaf] for leaf in shown], ALL)]
        if "filter" in data.manifests:
            series.append(("kept samples", [leaf_kept[leaf] for leaf in shown], KEPT))
        labels = [_clip(leaf, 60) for leaf in shown]
        body.append(_coverage_chart(labels, series, "samples", "coverage per taxonomy leaf"))
        body.append(_table(["taxonomy leaf", "generated", "kept"], [[x, leaf_gen[x], leaf_kept[x]] for x in leaves]))
    else:
        body.append(_nodata("no sample comes from a taxonomy leaf (generate.kinds has no qa, or none was made)"))
    return Section(
        "coverage",
        "Coverage",
        "How much of each source document and taxonomy leaf made it into the data: a document with chunks but no "
        "kept sample is not represented in training.",
        body,
    )


def section_tokens(data: RunData, facts: dict[str, Any]) -> Section:
    body: list[str] = []
    usage: list[tuple[str, dict[str, Any]]] = []
    for stage in STAGES:
        m = data.manifests.get(stage, {})
        for key, label in (("teacher", stage), ("second_model", f"{stage} (second model)")):
            if isinstance(m.get(key), dict):
                usage.append((label, m[key]))
    facts["tokens"] = {label: {k: t.get(k, 0) for k, _ in TEACHER_COLUMNS} for label, t in usage}
    if usage:
        fig, ax = _figure(9, 3.0)
        x = list(range(len(usage)))
        for off, key, colour in ((-0.2, "input_tokens", ALL), (0.2, "output_tokens", KEPT)):
            bars = ax.bar([i + off for i in x], [int(t.get(key, 0)) for _, t in usage], 0.4, label=key, color=colour)
            ax.bar_label(bars, fontsize=8, padding=1)
        ax.set_xticks(x, [label for label, _ in usage], fontsize=9)
        ax.set_ylabel("tokens")
        ax.legend(frameon=False, fontsize=9)
        body.append(_img(fig, "teacher tokens per stage"))
        rows: list[list[Any]] = [
            [label, f"{t.get('backend', '')}:{t.get('model', '')}", *(t.get(k, 0) for k, _ in TEACHER_COLUMNS)]
            for label, t in usage
        ]
        if len(usage) > 1:
            rows.append(["total", "", *(sum(t.get(k, 0) for _, t in usage) for k, _ in TEACHER_COLUMNS)])
        body.append(_table(["stage", "teacher", *(label for _, label in TEACHER_COLUMNS)], rows))
        body.append(
            '<p class="note">Teacher statistics of each stage\'s latest execution: a re-run that reuses its shards '
            "or answers from the response cache spends no new tokens.</p>"
        )
    else:
        body.append(_nodata("no stage has used a teacher yet"))
    steps: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in data.generated:
        for step, (i, o) in s.tokens.items():
            steps[step][0] += i
            steps[step][1] += o
    if steps:
        body.append("<h3>Tokens behind the generated samples (from their provenance)</h3>")
        body.append(_table(["step", "input tokens", "output tokens"], [[k, *v] for k, v in sorted(steps.items())]))
    return Section("tokens", "Tokens spent", "Teacher requests and tokens, from the stage manifests.", body)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2731;
background:#f6f7f9}
header{background:#264653;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85;font-size:13px}nav{padding:8px 32px;background:#e9edf1;font-size:14px}
nav a{margin-right:16px;color:#264653}main{max-width:1100px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border-radius:8px;padding:8px 20px 16px;margin:16px 0;box-shadow:0 1px 3px #0002}
h2{font-size:18px;border-bottom:1px solid #e3e7eb;padding-bottom:6px}h3{font-size:15px;margin:18px 0 6px}
.intro{color:#4a5a68;font-size:13px;margin-top:-4px}img{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #e3e7eb;
text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f3f6}
.nodata{color:#8a5a00;background:#fff6e0;border-left:4px solid #e9c46a;padding:6px 10px;font-size:13px}
.note{color:#4a5a68;font-size:13px}.problem{color:#9b2226;font-size:13px}
h4{font-size:14px;margin:14px 0 4px}.example{border-left:4px solid #8d99ae;background:#f8f9fb;margin:6px 0;
padding:6px 10px;font-size:13px}.example.kept{border-color:#2a9d8f}.example.rejected{border-color:#e76f51}
.exfacts{color:#4a5a68;margin-bottom:4px}.exfact{margin-right:14px;overflow-wrap:anywhere}
.exlabel{font-weight:600;color:#264653}.extext{margin:3px 0}summary{cursor:pointer;color:#264653}
.extext pre{white-space:pre-wrap;overflow-wrap:anywhere;font-family:inherit;margin:2px 0 4px;background:#fff;
padding:4px 8px;border:1px solid #e3e7eb;border-radius:4px;max-height:420px;overflow:auto}
"""


def section_privacy(data: RunData, facts: dict[str, Any]) -> Section | None:
    """PII detections per entity type (generate) and real values found in the export; None when privacy is off."""
    found = {stage: m["privacy"] for stage, m in data.manifests.items() if m.get("privacy")}
    if not found:
        return None
    facts["privacy"] = found
    rows: list[list[Any]] = []
    for stage, p in found.items():
        counts = p.get("detections", p.get("real_values_in_export", {})) or {}
        what = "detections" if "detections" in p else "real values in the export"
        mode = p.get("mode")
        rows += [[stage, mode, what, e, n] for e, n in counts.items()] or [[stage, mode, what, "-", 0]]
    return Section(
        "privacy",
        "Private data",
        "What the privacy layer replaced before text went to a teacher, per entity type, and how many real values "
        "the export scan found (it should be none). The values themselves are never shown here.",
        [_table(["stage", "mode", "count of", "entity type", "n"], rows)],
    )


def build_report(store: RunStore) -> str:
    """The whole report as one HTML string."""
    data = collect(store)
    facts: dict[str, Any] = {"run": str(store.root)}
    sections = [
        section_stages(data, facts),
        section_rejects(data, facts),
        section_examples(data, facts),
        section_lengths(data, facts),
        section_scores(data, facts),
        section_duplicates(data, facts),
        section_coverage(data, facts),
        section_tokens(data, facts),
    ]
    if (privacy := section_privacy(data, facts)) is not None:
        sections.append(privacy)
    facts["problems"] = data.problems
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>datapipe report: {html.escape(store.root.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>datapipe report: {html.escape(store.root.name)}</h1>",
        f"<p>{html.escape(str(store.root))} · written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p></header>",
        f"<nav>{nav}</nav><main>",
    ]
    parts += [f'<p class="problem">{html.escape(p)}</p>' for p in data.problems]
    for s in sections:
        intro = f'<p class="intro">{html.escape(s.intro)}</p>' if s.intro else ""
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{intro}{"".join(s.body)}</section>')
    blob = json.dumps(facts, sort_keys=True, ensure_ascii=True).replace("</", "<\\/")
    parts.append(f'</main><script type="application/json" id="datapipe-report-data">{blob}</script></body></html>')
    return "\n".join(parts)


def write_report(store: RunStore, out: str | Path | None = None) -> UPath:
    """Write the report (default ``<run>/report.html``) and return its path."""
    if not store.root.is_dir():
        raise FileNotFoundError(f"run folder {store.root} does not exist: run `datapipe run` for it first")
    path = UPath(out) if out is not None else store.root / "report.html"
    fsio.write_bytes(path, build_report(store).encode("utf-8"))
    return path
