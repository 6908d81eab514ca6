"""Example records for the report: a few kept samples per kind and a few rejects per reason.

People judge data by reading it, so the report shows records next to its counts. Examples are picked by
a hash of the record id (the smallest hashes win), so the same run always shows the same examples and a
re-run shows the same ones for records that did not change, without holding every record in memory.
Every text is HTML-escaped; long texts are folded in ``<details>`` (no script is needed to unfold them).
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass, field
from typing import Any

from datapipe.records import PreferencePair, Reject, Sample

PER_GROUP = 3
SHOW_CHARS = 280  # texts up to this long are shown as they are; longer ones are folded
MAX_CHARS = 6000  # what an unfolded text shows at most


def _rank(record_id: str) -> str:
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


@dataclass
class Example:
    """One record as the report shows it: labelled texts plus facts (source, scores, reason, detail)."""

    record_id: str
    title: str
    facts: list[tuple[str, str]]
    texts: list[tuple[str, str]]  # (label, text); context and raw payloads are always folded


@dataclass
class Picker:
    """Keeps the ``n`` records with the smallest id hash per group, seen one at a time."""

    n: int = PER_GROUP
    groups: dict[str, list[tuple[str, int, Example]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    _seq: int = 0

    def offer(self, group: str, record_id: str, make: Any) -> None:
        """Count the record in ``group``; build its Example (``make()``) only when it is among the first n."""
        self.totals[group] = self.totals.get(group, 0) + 1
        heap = self.groups.setdefault(group, [])
        key = _rank(record_id)
        if len(heap) >= self.n and key >= max(k for k, _, _ in heap):
            return
        self._seq += 1
        heap.append((key, self._seq, make()))
        heap.sort(key=lambda t: (t[0], t[1]))
        del heap[self.n :]

    def picked(self, group: str) -> list[Example]:
        return [e for _, _, e in self.groups.get(group, [])]


def _scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(scores.items()))


def _source(p: Any) -> str:
    pages = f" p. {', '.join(str(x) for x in p.pages)}" if getattr(p, "pages", None) else ""
    return f"{p.source_path}{pages} (chars {p.char_start}-{p.char_end})"


def sample_example(s: Sample) -> Example:
    facts = [("id", s.id), ("kind", s.kind), ("source", _source(s.provenance))]
    if s.provenance.taxonomy_path:
        facts.append(("taxonomy", s.provenance.taxonomy_path))
    if s.scores:
        facts.append(("scores", _scores(s.scores)))
    label = "question" if s.kind == "qa" else "instruction"
    texts = [(label, s.instruction), ("response", s.response), ("source context", s.provenance.context)]
    return Example(s.id, s.instruction, facts, texts)


def pair_example(p: PreferencePair) -> Example:
    def last(messages: list[Any], role: str) -> str:
        return next((m.content for m in reversed(messages) if m.role == role), "")

    prompt = last(p.prompt, "user")
    facts = [
        ("id", p.id),
        ("kind", "preference"),
        ("source", _source(p.provenance)),
        ("scores", f"chosen {p.chosen_score:g}, rejected {p.rejected_score:g}, margin {p.margin:g}"),
        ("judge", p.judge_model),
    ]
    texts = [
        ("prompt", prompt),
        ("chosen", last(p.chosen, "assistant")),
        ("rejected", last(p.rejected, "assistant")),
        ("source context", p.provenance.context),
    ]
    return Example(p.id, prompt, facts, texts)


def reject_example(r: Reject, sample: Sample | None) -> Example:
    """A reject with its full reason, detail and source; the dropped sample's texts when the payload is one,
    otherwise the payload itself (a raw teacher output, a record as JSON), folded."""
    facts = [("id", r.record_id), ("reason", r.reason)]
    if r.detail:
        facts.append(("detail", r.detail))
    if sample is not None:
        ex = sample_example(sample)
        facts += [f for f in ex.facts if f[0] not in ("id",)]
        return Example(r.record_id, sample.instruction, facts, ex.texts)
    if r.source_path:
        facts.append(("source", r.source_path))
    texts = [("payload", _pretty(r.payload))] if r.payload else []
    return Example(r.record_id, r.detail or r.reason, facts, texts)


def _pretty(payload: str) -> str:
    try:
        return json.dumps(json.loads(payload), indent=1, ensure_ascii=False)
    except ValueError:
        return payload


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _text(label: str, text: str) -> str:
    esc_label = html.escape(label)
    if not text.strip():
        return f'<div class="extext"><span class="exlabel">{esc_label}</span> <i>(empty)</i></div>'
    fold = label in ("source context", "payload") or len(text) > SHOW_CHARS or text.count("\n") > 6
    shown = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f"\n… ({len(text) - MAX_CHARS:,} more characters)"
    if not fold:
        return f'<div class="extext"><span class="exlabel">{esc_label}</span><pre>{html.escape(shown)}</pre></div>'
    summary = f"{esc_label} ({len(text):,} chars): {html.escape(_clip(text, 110))}"
    return f'<details class="extext"><summary>{summary}</summary><pre>{html.escape(shown)}</pre></details>'


def render_example(ex: Example, css: str) -> str:
    facts = "".join(f'<span class="exfact"><b>{html.escape(k)}</b> {html.escape(v)}</span>' for k, v in ex.facts if v)
    texts = "".join(_text(label, t) for label, t in ex.texts)
    return f'<div class="example {css}"><div class="exfacts">{facts}</div>{texts}</div>'
