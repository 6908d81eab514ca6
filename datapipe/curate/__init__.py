"""Human curation in Argilla: push samples for review, pull reviewers' decisions back.

``push`` creates (or updates) one dataset per sample kind in the configured workspace. Records are
keyed by sample id (Argilla's record ``id``), so pushing again updates rather than duplicates, and the
records of samples the run no longer has are removed. The reviewer guidelines and question texts come
from prompts/review_guidelines/ (:mod:`datapipe.curate.guidelines`) and are refreshed on every push. Each
record carries the source context, the instruction and the response as fields; a keep/discard label,
a 1-5 quality rating and a correction text (prefilled with the response) as questions; datapipe's
filter verdicts and judge scores as suggestions; and metadata (kind, taxonomy path, source, scores)
for the UI's filters.

``pull`` reads every record's submitted responses, decides per record with the configured policy
(:func:`decide`) and stores the decisions as the run's ``curate`` stage: discarded records become
rejects ``discarded_by_reviewer``; a correction replaces the response at export time (the teacher's
text stays in ``provenance.curation.original_response``) and yields a preference pair, chosen = the
reviewer's text, rejected = the teacher's. Drafts and records without enough submitted reviews stay
pending and change nothing. Nothing local is written until every dataset has been read.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import mean
from typing import TYPE_CHECKING, Any

from datapipe.curate.guidelines import load_guidelines
from datapipe.errors import DatapipeError, TerminalError, TransientError
from datapipe.filter.scores import SCORE_KEYS
from datapipe.records import SAMPLE_KINDS as SAMPLE_KINDS  # the one list (re-exported for callers here)
from datapipe.records import (
    Candidate,
    Curation,
    CurationDecision,
    Message,
    PreferencePair,
    Reject,
    Sample,
    content_id,
)

if TYPE_CHECKING:
    from datapipe.config import CurateConfig, PipelineConfig
    from datapipe.store import RunStore

DEFAULT_API_URL = "http://localhost:6900"
KEEP, DISCARD = "keep", "discard"
# Argilla metadata property names: lowercase letters, digits, '-' and '_'.
_TERMS = ("kind", "taxonomy_path", "leaf_kind", "source")
_SCORE_PREFIX = "score_"
_PAIR_SCORES = ("chosen_score", "rejected_score", "margin")


class CurationError(TerminalError):
    """Argilla refused the request or the dataset does not fit; the message says what to change."""


class ArgillaUnreachable(TransientError):
    """Argilla could not be reached; retrying later may work. Nothing local was changed."""


def _quiet_sdk() -> None:
    """The SDK logs a warning per batch and draws tqdm bars; datapipe reports progress itself."""
    logging.getLogger("argilla.sdk").setLevel(logging.ERROR)
    import argilla.records._dataset_records as dataset_records
    from tqdm.auto import tqdm

    def _silent(*args: Any, **kwargs: Any) -> Any:
        return tqdm(*args, **{**kwargs, "disable": True})

    dataset_records.tqdm = _silent  # type: ignore[attr-defined]


@dataclass
class Connection:
    client: Any
    url: str
    key_env: str


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def connect(cfg: CurateConfig) -> Connection:
    """An Argilla client for ``cfg``, checked with one request; errors never contain the key."""
    import argilla as rg

    url = (cfg.api_url or os.environ.get("ARGILLA_API_URL") or DEFAULT_API_URL).rstrip("/")
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise CurationError(
            f"no Argilla API key: set the environment variable {cfg.api_key_env} (curate.api_key_env) "
            f"to your key from {url} (My settings > API key)"
        )
    _quiet_sdk()
    try:
        client = rg.Argilla(api_url=url, api_key=key, timeout=int(cfg.timeout), retries=1)
        client.me  # noqa: B018 - one authenticated request, so a wrong key fails here
    except Exception as exc:  # the SDK raises httpx, Argilla and credential errors alike
        raise _classify(exc, url, cfg.api_key_env, key) from None
    return Connection(client, url, cfg.api_key_env)


def _classify(exc: BaseException, url: str, key_env: str, key: str | None) -> DatapipeError:
    import httpx

    text = _scrub(f"{type(exc).__name__}: {exc}", key)
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, (httpx.ConnectError, httpx.TimeoutException, ConnectionError)) for e in chain) or (
        "connect" in text.lower() and status is None
    ):
        return ArgillaUnreachable(
            f"cannot reach Argilla at {url} ({text[:200]}). Start the server or fix curate.api_url / "
            "ARGILLA_API_URL; nothing was changed locally."
        )
    if status in (401, 403) or "credential" in text.lower() or "unauthorized" in text.lower():
        return CurationError(
            f"Argilla at {url} refused the API key in {key_env} (HTTP {status or 401}); the key is not shown. "
            f"Copy it again from the Argilla UI (My settings) into {key_env}; nothing was changed locally."
        )
    return CurationError(f"Argilla at {url} failed: {text[:400]}; nothing was changed locally.")


def dataset_name(cfg: PipelineConfig, kind: str) -> str:
    prefix = cfg.curate.dataset_prefix or cfg.run_id or "run"
    return f"{prefix}-{kind}"


def _settings(kind: str, metadata: list[str]) -> Any:
    import argilla as rg

    guide = load_guidelines(kind)
    text = guide.questions
    if kind == "preference":
        fields = [
            rg.TextField(name="context", title="Source context", required=False),
            rg.TextField(name="prompt", title="Prompt"),
            rg.TextField(name="chosen", title="Chosen response (preferred by the judge)"),
            rg.TextField(name="rejected", title="Rejected response"),
        ]
        correction_title = "Corrected chosen response (edit to fix it; leave as is if it is fine)"
    else:
        title = "Question" if kind == "qa" else "Instruction"
        fields = [
            rg.TextField(name="context", title="Source context", required=False),
            rg.TextField(name="instruction", title=title),
            rg.TextField(name="response", title="Response"),
        ]
        correction_title = text["correction"].title
    questions = [
        rg.LabelQuestion(
            name="keep", title=text["keep"].title, description=text["keep"].description, labels=[KEEP, DISCARD]
        ),
        rg.RatingQuestion(
            name="quality",
            title=text["quality"].title,
            description=text["quality"].description,
            values=[1, 2, 3, 4, 5],
            required=False,
        ),
        rg.TextQuestion(
            name="correction", title=correction_title, description=text["correction"].description, required=False
        ),
    ]
    props: list[Any] = [rg.TermsMetadataProperty(name=n) for n in _TERMS]
    props += [rg.FloatMetadataProperty(name=n) for n in metadata]
    return rg.Settings(
        fields=fields,
        questions=questions,
        metadata=props,
        distribution=rg.TaskDistribution(min_submitted=1),
        guidelines=guide.text,
    )


def _score_props(records: Iterable[Sample | PreferencePair]) -> list[str]:
    names: set[str] = set()
    for r in records:
        if isinstance(r, Sample):
            names |= {_SCORE_PREFIX + _meta_name(k) for k in r.scores}
        else:
            names |= set(_PAIR_SCORES)
    return sorted(names)


def _agent(text: str) -> str:
    """Argilla accepts letters, digits, '-_:./' and spaces in a suggestion's agent."""
    return re.sub(r"[^A-Za-z0-9\-_:./\s]", " ", text)[:200].strip() or "datapipe"


def _meta_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key.lower())


def _suggest(sample: Sample) -> tuple[float | None, int | None, str]:
    """Confidence for 'keep' and a 1-5 quality suggestion from the judge scores, and the agent string."""
    judged = [sample.scores[k] for k in SCORE_KEYS if k in sample.scores]
    passed = "/".join(sorted(k for k, v in sample.verdicts.items() if v == "pass"))
    agent = f"datapipe filters passed: {passed or 'none'}"
    if not judged:
        return None, None, agent
    return round(min(judged) / 5, 3), int(round(mean(judged))), agent + " and judge"


def _sample_record(sample: Sample, score_props: list[str]) -> Any:
    import argilla as rg

    p = sample.provenance
    metadata: dict[str, Any] = {
        "kind": sample.kind,
        "taxonomy_path": p.taxonomy_path or "-",
        "leaf_kind": p.leaf_kind or "-",
        "source": p.source_path,
    }
    for k, v in sample.scores.items():
        if _SCORE_PREFIX + _meta_name(k) in score_props:
            metadata[_SCORE_PREFIX + _meta_name(k)] = float(v)
    confidence, quality, agent = _suggest(sample)
    suggestions = [rg.Suggestion("keep", KEEP, score=confidence, agent=_agent(agent))]
    if quality is not None:
        suggestions.append(rg.Suggestion("quality", quality, agent=_agent("datapipe judge")))
    suggestions.append(rg.Suggestion("correction", sample.response, agent=_agent("teacher response")))
    return rg.Record(
        id=sample.id,
        fields={"context": p.context, "instruction": sample.instruction, "response": sample.response},
        metadata=metadata,
        suggestions=suggestions,
    )


def _last(messages: list[Message], role: str) -> str:
    return next((m.content for m in reversed(messages) if m.role == role), "")


def _pair_record(pair: PreferencePair) -> Any:
    import argilla as rg

    p = pair.provenance
    chosen = _last(pair.chosen, "assistant")
    metadata = {
        "kind": "preference",
        "taxonomy_path": p.taxonomy_path or "-",
        "leaf_kind": p.leaf_kind or "-",
        "source": p.source_path,
        "chosen_score": float(pair.chosen_score),
        "rejected_score": float(pair.rejected_score),
        "margin": float(pair.margin),
    }
    return rg.Record(
        id=pair.id,
        fields={
            "context": p.context,
            "prompt": _last(pair.prompt, "user"),
            "chosen": chosen,
            "rejected": _last(pair.rejected, "assistant"),
        },
        metadata=metadata,
        suggestions=[
            rg.Suggestion(
                "keep", KEEP, score=round(min(pair.margin / 4, 1.0), 3), agent=_agent(f"judge {pair.judge_model}")
            ),
            rg.Suggestion("correction", chosen, agent=_agent("judge chosen response")),
        ],
    )


def _items_by_kind(cfg: PipelineConfig, store: RunStore) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    wanted = set(cfg.curate.kinds)
    if store.read_manifest("filter") is not None:
        for s in store.iter_records("filter", Sample):
            if s.kind in wanted:
                out.setdefault(s.kind, []).append(s)
    if "preference" in wanted and store.read_manifest("preference") is not None:
        pairs = list(store.iter_records("preference", PreferencePair))
        if pairs:
            out["preference"] = pairs
    return out


@dataclass
class PushResult:
    url: str
    workspace: str
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def _ensure_workspace(conn: Connection, name: str) -> Any:
    import argilla as rg

    with warnings.catch_warnings():  # the SDK warns when a lookup finds nothing
        warnings.simplefilter("ignore")
        ws = conn.client.workspaces(name)
    if ws is None:
        ws = rg.Workspace(name=name, client=conn.client).create()
    return ws


def _find_dataset(conn: Connection, ws: Any, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conn.client.datasets(name, workspace=ws)


def _ensure_dataset(conn: Connection, ws: Any, name: str, kind: str, score_props: list[str]) -> Any:
    """The dataset, created with the current settings, or checked and brought up to date: new score
    properties added, guidelines and question texts replaced when the guidelines file changed."""
    import argilla as rg

    ds = _find_dataset(conn, ws, name)
    if ds is None:
        return rg.Dataset(name=name, workspace=ws, settings=_settings(kind, score_props), client=conn.client).create()
    have_fields = {f.name for f in ds.settings.fields}
    have_questions = {q.name for q in ds.settings.questions}
    want = _settings(kind, [])
    if have_fields != {f.name for f in want.fields} or have_questions != {q.name for q in want.questions}:
        raise CurationError(
            f"Argilla dataset {name!r} in workspace {ws.name!r} exists with other fields/questions "
            f"({sorted(have_fields)}, {sorted(have_questions)}); set curate.dataset_prefix to push to a new one"
        )
    have_meta = {m.name for m in ds.settings.metadata}
    for prop in (n for n in score_props if n not in have_meta):
        ds.settings.metadata.add(rg.FloatMetadataProperty(name=prop))
    if not set(score_props) <= have_meta:
        ds.settings.metadata.create()  # creates the ones the server does not have yet
    if (ds.settings.guidelines or "") != want.guidelines:
        conn.client.api.datasets.update(ds._model.model_copy(update={"guidelines": want.guidelines}))
    for question in ds.settings.questions:
        target = want.questions[question.name]
        if (question.title, question.description) != (target.title, target.description):
            question.title, question.description = target.title, target.description
            question.update()
    return ds


def _remove_stale(ds: Any, current: set[str]) -> tuple[int, int]:
    """Delete the records whose sample is no longer in the run (regenerated, filtered out, its source
    deleted), so reviewers never spend time on data that does not exist any more. Returns (removed,
    removed that had reviews): those reviews no longer apply to anything the run exports."""
    stale = [r for r in ds.records(with_responses=True, with_suggestions=False) if r.id not in current]
    if stale:
        ds.records.delete(stale)
    return len(stale), sum(1 for r in stale if list(r.responses))


def push(cfg: PipelineConfig, store: RunStore, progress: Any = None) -> PushResult:
    """Create or update one Argilla dataset per sample kind with the run's kept samples, and remove the
    records of samples the run no longer has (counted as ``removed_stale`` in push.json)."""
    items = _items_by_kind(cfg, store)
    if not items:
        raise CurationError(
            f"nothing to push in {store.root}: run `datapipe filter` (or `datapipe run`) first; "
            f"curate.kinds={cfg.curate.kinds}"
        )
    conn = connect(cfg.curate)
    t0 = time.perf_counter()
    result = PushResult(conn.url, cfg.curate.workspace)
    guides: dict[str, dict[str, str]] = {}
    try:
        ws = _ensure_workspace(conn, cfg.curate.workspace)
        for absent in (k for k in cfg.curate.kinds if k not in items):
            ds = _find_dataset(conn, ws, dataset_name(cfg, absent))
            if ds is not None:  # pushed before, and the run has no record of this kind now
                removed, reviewed = _remove_stale(ds, set())
                result.datasets[ds.name] = _push_counts(0, 0, removed, reviewed, _count(ds))
        for kind, records in items.items():
            name = dataset_name(cfg, kind)
            props = _score_props(records)
            ds = _ensure_dataset(conn, ws, name, kind, props)
            guide = load_guidelines(kind)
            guides[name] = {"version": guide.version, "hash": guide.hash}
            removed, reviewed = _remove_stale(ds, {r.id for r in records})
            before = _count(ds)
            build = _pair_record if kind == "preference" else (lambda s, props=props: _sample_record(s, props))
            if progress is not None:
                progress.start(f"push {kind}", len(records))
            for i in range(0, len(records), cfg.curate.batch_size):
                batch = records[i : i + cfg.curate.batch_size]
                ds.records.log([build(r) for r in batch], batch_size=len(batch))
                if progress is not None:
                    progress.advance(f"push {kind}", len(batch))
            if progress is not None:
                progress.done(f"push {kind}")
            after = _count(ds)
            result.datasets[name] = _push_counts(len(records), after - before, removed, reviewed, after)
    except DatapipeError:
        raise
    except Exception as exc:
        raise _classify(exc, conn.url, conn.key_env, os.environ.get(conn.key_env)) from None
    result.seconds = round(time.perf_counter() - t0, 3)
    facts = {"url": result.url, "workspace": result.workspace, "datasets": result.datasets, "guidelines": guides}
    store.write_json("curate", "push.json", {**facts, "at": time.time(), "seconds": result.seconds})
    return result


def _push_counts(records: int, new: int, removed: int, removed_reviewed: int, on_server: int) -> dict[str, int]:
    return {
        "records": records,
        "new": new,
        "updated": records - new,
        "removed_stale": removed,
        "removed_stale_reviewed": removed_reviewed,
        "on_server": on_server,
    }


def _count(ds: Any) -> int:
    return int(ds.progress()["total"])


@dataclass
class Review:
    """One reviewer's submitted (or draft) answer to one record."""

    user: str
    status: str  # submitted | discarded | draft
    keep: str | None = None
    quality: float | None = None
    correction: str | None = None


def decide(
    reviews: list[Review], original: str, policy: str, min_submitted: int
) -> tuple[str, str | None, list[str], int, int, float | None]:
    """(decision, corrected_text, reviewers, keep_votes, discard_votes, mean quality) for one record.

    Drafts never count. A review votes discard when its keep label is ``discard`` or the reviewer used
    Argilla's Discard button; otherwise it votes keep. Until ``min_submitted`` reviews are in, the record is
    ``pending``. ``any_discard``: one discard vote drops it. ``majority``: the larger side wins, a tie is
    ``conflict`` (left pending). A kept record is ``corrected`` when the keep-voters' correction texts differ
    from the original: the text most of them wrote; differing texts without a majority are a ``conflict``.
    """
    done = [r for r in reviews if r.status in ("submitted", "discarded")]
    keep = [r for r in done if r.status == "submitted" and r.keep != DISCARD]
    discard = [r for r in done if r not in keep]
    reviewers = sorted(r.user for r in done)
    ratings = [r.quality for r in done if r.quality is not None]
    quality = round(mean(ratings), 3) if ratings else None
    base = (reviewers, len(keep), len(discard), quality)
    if len(done) < min_submitted:
        return ("pending", None, *base)
    if policy == "any_discard":
        verdict = DISCARD if discard else KEEP
    elif len(keep) == len(discard):
        return ("conflict", None, *base)
    else:
        verdict = KEEP if len(keep) > len(discard) else DISCARD
    if verdict == DISCARD:
        return ("discarded", None, *base)
    texts = Counter((r.correction or "").strip() or original.strip() for r in keep)
    (text, n), *rest = texts.most_common()
    if rest and rest[0][1] == n:
        return ("conflict", None, *base)
    if text == original.strip():
        return ("accepted", None, *base)
    return ("corrected", text, *base)


def _reviews(record: Any, users: dict[str, str]) -> list[Review]:
    by_user: dict[str, Review] = {}
    for resp in record.responses:
        uid = str(resp.user_id)
        review = by_user.setdefault(uid, Review(users.get(uid, uid), str(resp.status.value)))
        if resp.question_name == "keep":
            review.keep = resp.value
        elif resp.question_name == "quality" and resp.value is not None:
            review.quality = float(resp.value)
        elif resp.question_name == "correction":
            review.correction = resp.value
    return list(by_user.values())


@dataclass
class PullResult:
    url: str
    decisions: Counter[str] = field(default_factory=Counter)
    new_pairs: int = 0
    not_on_server: int = 0
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)


def pull(cfg: PipelineConfig, store: RunStore, progress: Any = None) -> PullResult:
    """Fetch every pushed dataset's responses, decide per record, store decisions, rejects and pairs."""
    from datapipe.store import StageRecorder

    items = _items_by_kind(cfg, store)
    conn = connect(cfg.curate)
    t0 = time.perf_counter()
    decisions: list[CurationDecision] = []
    missing = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ws = conn.client.workspaces(cfg.curate.workspace)
        if ws is None:
            raise CurationError(
                f"Argilla workspace {cfg.curate.workspace!r} does not exist at {conn.url}: "
                "run `datapipe curate push` first"
            )
        users = {str(u.id): u.username for u in conn.client.users}
        for kind, records in items.items():
            name = dataset_name(cfg, kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = conn.client.datasets(name, workspace=ws)
            if ds is None:
                missing += len(records)
                continue
            originals = {
                r.id: (_last(r.chosen, "assistant") if isinstance(r, PreferencePair) else r.response) for r in records
            }
            if progress is not None:
                progress.start(f"pull {kind}", len(records))
            seen = 0
            for record in ds.records(with_responses=True, with_suggestions=False):
                if record.id not in originals:
                    continue  # pushed from an earlier filter output: no longer in this run
                seen += 1
                reviews = _reviews(record, users)
                decision, text, reviewers, kv, dv, quality = decide(
                    reviews, originals[record.id], cfg.curate.policy, cfg.curate.min_submitted
                )
                drafts = sum(1 for r in reviews if r.status == "draft")
                decisions.append(
                    CurationDecision(
                        record_id=record.id,
                        kind=kind,
                        dataset=name,
                        decision=decision,  # type: ignore[arg-type]
                        corrected_text=text,
                        reviewers=reviewers,
                        keep_votes=kv,
                        discard_votes=dv,
                        drafts=drafts,
                        quality=quality,
                    )
                )
                if progress is not None:
                    progress.advance(f"pull {kind}")
            missing += len(records) - seen
            if progress is not None:
                progress.done(f"pull {kind}")
    except DatapipeError:
        raise
    except Exception as exc:
        raise _classify(exc, conn.url, conn.key_env, os.environ.get(conn.key_env)) from None

    # Everything was read: now write, atomically per file (decisions + rejects, then pairs, then manifest).
    by_id = {r.id: r for rs in items.values() for r in rs}
    rejects = [
        _discard_reject(d, by_id[d.record_id], cfg.curate.policy) for d in decisions if d.decision == "discarded"
    ]
    pairs = [
        reviewer_pair(by_id[d.record_id], d, cfg.curate.policy)
        for d in decisions
        if d.decision == "corrected" and d.kind != "preference"
    ]
    cfg_hash = content_id(cfg.section_hash("curate"), length=16)
    key = content_id(cfg_hash, [d.model_dump() for d in decisions], length=24)
    rec = StageRecorder(store, "curate", cfg_hash)
    reused = store.has_shard("curate", key)
    if not reused:
        store.write_shard("curate", key, CurationDecision.to_table(decisions), rejects)
        store.write_shard("curate", f"pairs-{key}", PreferencePair.to_table(pairs), [])
    counts: Counter[str] = Counter(d.decision for d in decisions)
    inputs = [k for stage in ("filter", "preference") if store.read_manifest(stage) for k in store.current_keys(stage)]
    rec.add(
        key,
        inputs,
        len(by_id),
        counts["accepted"] + counts["corrected"],
        len(rejects),
        time.perf_counter() - t0,
        reused,
    )
    rec.extra.update(
        {
            "decisions": dict(sorted(counts.items())),
            "not_pushed_or_unreviewed": missing,
            "reviewer_pairs": len(pairs),
            "pairs_key": f"pairs-{key}",
            "policy": cfg.curate.policy,
            "min_submitted": cfg.curate.min_submitted,
            "url": conn.url,
            "workspace": cfg.curate.workspace,
        }
    )
    manifest = rec.finish()
    return PullResult(conn.url, counts, len(pairs), missing, round(time.perf_counter() - t0, 3), manifest)


def _discard_reject(d: CurationDecision, record: Sample | PreferencePair, policy: str) -> Reject:
    who = ", ".join(d.reviewers)
    return Reject(
        stage="curate",
        record_id=d.record_id,
        reason="discarded_by_reviewer",
        detail=f"{d.discard_votes} of {d.discard_votes + d.keep_votes} reviewers discarded it ({who}); "
        f"policy {policy}; Argilla dataset {d.dataset}",
        source_path=record.provenance.source_path,
        payload=record.model_dump_json(),
    )


def _curation(d: CurationDecision, policy: str, original: str | None) -> Curation:
    return Curation(
        decision="corrected" if d.decision == "corrected" else "accepted",
        dataset=d.dataset,
        reviewers=d.reviewers,
        policy=policy,
        keep_votes=d.keep_votes,
        discard_votes=d.discard_votes,
        quality=d.quality,
        original_response=original,
    )


def _replace_last_assistant(messages: list[Message], text: str) -> list[Message]:
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "assistant":
            out[i] = Message(role="assistant", content=text)
            break
    return out


def reviewer_pair(sample: Sample, d: CurationDecision, policy: str) -> PreferencePair:
    """chosen = the reviewer's correction, rejected = the teacher's original response."""
    assert d.corrected_text is not None
    prompt = sample.messages[:-1] if sample.messages and sample.messages[-1].role == "assistant" else sample.messages
    reviewer = ", ".join(d.reviewers)
    return PreferencePair(
        id=content_id("reviewer-pair", sample.id, d.corrected_text),
        sample_id=sample.id,
        prompt=prompt,
        chosen=[Message(role="assistant", content=d.corrected_text)],
        rejected=[Message(role="assistant", content=sample.response)],
        chosen_score=1.0,
        rejected_score=0.0,
        margin=1.0,
        candidates=[
            Candidate(
                text=d.corrected_text, source="reviewer", backend="argilla", model=reviewer, params="{}", score=1.0
            ),
            Candidate(text=sample.response, source="original", backend="teacher", model="", params="{}", score=0.0),
        ],
        judge_model=f"reviewer:{reviewer}",
        judge_prompt=f"argilla:{d.dataset}",
        provenance=sample.provenance.model_copy(update={"curation": _curation(d, policy, sample.response)}),
    )


def curation_key(store: RunStore) -> str:
    """The last pull's shard key ('' if none): what exports and versions depend on, read from the manifest."""
    manifest = store.read_manifest("curate")
    return str(manifest["shards"][0]["key"]) if manifest and manifest.get("shards") else ""


def load_decisions(store: RunStore) -> tuple[dict[str, CurationDecision], list[PreferencePair], str]:
    """The last pull's decisions by record id, its reviewer pairs, and the pull's shard key ('' if none)."""
    key = curation_key(store)
    if not key:
        return {}, [], ""
    manifest = store.read_manifest("curate") or {}
    decisions = {d.record_id: d for d in store.read_shard("curate", key, CurationDecision)}
    pairs = store.read_shard("curate", manifest["pairs_key"], PreferencePair)
    return decisions, pairs, key


def apply_curation(
    store: RunStore, records: list[Any], curated_only: bool, *, pairs: bool = False
) -> tuple[list[Any], list[Reject], dict[str, int]]:
    """Records as reviewers left them: discarded ones removed (they are curate rejects already),
    corrections applied, reviewer pairs appended to preference pairs. With ``curated_only`` the
    records no reviewer accepted become export rejects ``not_curated``."""
    decisions, reviewer_pairs, _ = load_decisions(store)
    out: list[Any] = []
    rejects: list[Reject] = []
    counts: Counter[str] = Counter()
    policy = (store.read_manifest("curate") or {}).get("policy", "")
    for r in records:
        d = decisions.get(r.id)
        state = d.decision if d else "not_reviewed"
        counts[state] += 1
        if state == "discarded":
            continue
        if state in ("accepted", "corrected") and d is not None:
            out.append(_curated(r, d, policy))
        elif curated_only:
            rejects.append(
                Reject(
                    stage="export",
                    record_id=r.id,
                    reason="not_curated",
                    detail=f"--curated-only: review state {state}"
                    + (f" ({d.keep_votes} keep, {d.discard_votes} discard, {d.drafts} drafts)" if d else ""),
                    source_path=r.provenance.source_path,
                )
            )
        else:
            out.append(r)
    if pairs:
        out.extend(reviewer_pairs)
        counts["reviewer_pairs"] = len(reviewer_pairs)
    return out, rejects, dict(counts)


def _curated(r: Sample | PreferencePair, d: CurationDecision, policy: str) -> Any:
    if isinstance(r, PreferencePair):
        original = _last(r.chosen, "assistant")
        update: dict[str, Any] = {}
        if d.decision == "corrected" and d.corrected_text is not None:
            update["chosen"] = _replace_last_assistant(r.chosen, d.corrected_text)
        prov = r.provenance.model_copy(
            update={"curation": _curation(d, policy, original if d.decision == "corrected" else None)}
        )
        return r.model_copy(update={**update, "provenance": prov})
    prov = r.provenance.model_copy(
        update={"curation": _curation(d, policy, r.response if d.decision == "corrected" else None)}
    )
    verdicts = {**r.verdicts, "curation": d.decision}
    if d.decision == "corrected" and d.corrected_text is not None:
        return r.model_copy(
            update={
                "response": d.corrected_text,
                "messages": _replace_last_assistant(r.messages, d.corrected_text),
                "provenance": prov,
                "verdicts": verdicts,
            }
        )
    return r.model_copy(update={"provenance": prov, "verdicts": verdicts})


def curated_samples(store: RunStore) -> list[Sample]:
    """The kept samples reviewers accepted (corrections applied): what `export --curated-only` writes."""
    samples = list(store.iter_records("filter", Sample))
    out, _, _ = apply_curation(store, samples, curated_only=True)
    return out
