"""DPO preference pairs: several candidate responses per prompt, judged pointwise and pairwise.

Candidates come from the teacher at different sampling settings, optionally a second model
(the student being trained: on-policy rejected answers) and the sample's own grounded response.
Every candidate sees the same grounding as that response (``grounded``): a closed-book sample's
source chunk through ``prompts/preference_candidate``, an open-book sample's documents in its
user turn. So chosen and rejected differ in quality, not in what each side was allowed to see.

A rubric judge (``prompts/preference_judge``) scores each 1-5 with a rationale; every rating is
kept. Best and worst make the pair only when the margin reaches ``min_margin``. Then the pairwise
judge (``prompts/preference_pairwise``) compares them as A/B and again as B/A: verdicts that
disagree (or one tie) are position bias, rejected ``position_inconsistent``; both orders preferring
the pointwise loser is ``judges_disagree``. With ``max_length_ratio`` a chosen answer that wins by
being much longer without fewer unsupported numbers/names is rejected ``longer_not_better``.
Other reasons: ``tie``, ``low_margin``, ``all_bad`` (best below ``min_chosen_score``),
``judge_parse_error`` (raw judge replies kept), ``teacher_error``.

With ``hard_negatives`` a formed pair gets a sibling: the same chosen answer against a copy with one
supported number or name replaced by another from the same document. It is kept only when the
filter stage's own ``unsupported_number``/``unsupported_entity`` checks catch the change (the
self-check), and its candidate says what was replaced and which check caught it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from datapipe.config import FilterConfig, GenerationParams, PreferenceConfig
from datapipe.errors import TeacherError
from datapipe.generate.prompts import Prompt, load_prompt
from datapipe.reasons import teacher_failure
from datapipe.records import (
    Candidate,
    Message,
    PairwiseVerdict,
    PreferencePair,
    Reject,
    Sample,
    content_id,
)
from datapipe.teacher import Teacher

_SCORE = re.compile(r"score\W{0,5}([1-5](?:\.\d+)?)(?!\s*[-–/]\s*\d)", re.IGNORECASE)
_OUT_OF = re.compile(r"(?<![\d.])([1-5])\s*/\s*5\b")
_FIRST = re.compile(r"(?<![\d.\-–/])([1-5])(?![\d]|\s*[-–/]\s*\d)")
_RATIONALE = re.compile(r"rationale\s*[:.-]\s*(.+?)(?=\n\s*score\b|\Z)", re.IGNORECASE | re.DOTALL)


_TIE = re.compile(r"^\W*(?:tie|equal|equally|both|neither|same)\b", re.IGNORECASE)
_LEAD = re.compile(r"^\W*(?:(?i:answer|response|option)\s+)?\(?([AB])\)?(?=$|[\s.,:;)!*])")
_LABELLED = re.compile(
    r"(?i:better|winner|verdict|choice|prefer(?:red)?)\W{0,5}(?:(?i:answer|response|option)\s+)?\(?([AB])\b"
    r"|(?i:answer|response|option)\s+([AB])\s+(?i:is|was)\s+(?i:better|best|more|the better|correct)"
)
# after a leading "A": words that make it the verdict ("A is better"), not the article ("A good answer ...")
_VERDICT_VERBS = {"is", "was", "wins", "better", "because", "since", "as", "gives", "answers", "provides", "states"}


class JudgeParseError(ValueError):
    pass


def parse_verdict(text: str) -> str:
    """ "A", "B" or "tie" from a pairwise judge reply; JudgeParseError when it names neither.

    The verdict is the reply's leading letter ("B", "Answer A.", "(A) because ..."), a leading "tie",
    or a labelled letter anywhere ("Better: B"). A leading "A" followed by a lowercase word that is not
    a verdict verb is the article ("A good answer would ...") and does not count.
    """
    first_line = text.strip().split("\n", 1)[0]
    if _TIE.match(first_line):
        return "tie"
    m = _LEAD.match(first_line)
    if m:
        rest = first_line[m.end() :].split()
        nxt = rest[0].strip(".,:;!*").lower() if rest else ""
        if m.group(1) == "B" or not nxt or not rest[0][0].islower() or nxt in _VERDICT_VERBS:
            return m.group(1)
    m = _LABELLED.search(text)
    if m:
        return m.group(1) or m.group(2)
    raise JudgeParseError("no verdict A, B or tie in the judge's reply")


def parse_rating(text: str) -> tuple[float, str]:
    """(score 1-5, rationale) from a judge reply; JudgeParseError when there is no score.

    The score is a "Score: N" line, or else the first number 1-5 on the reply's first line
    (not a "1-5" range echoed from the instructions).
    """
    first_line = text.strip().split("\n", 1)[0]
    m = _SCORE.search(text) or _OUT_OF.search(first_line) or _FIRST.search(first_line)
    if not m:
        raise JudgeParseError("no score 1-5 in the judge's reply")
    rationale = _RATIONALE.search(text)
    return float(m.group(1)), (rationale.group(1).strip() if rationale else text.strip())


def form_pair(scored: list[Candidate], min_margin: float, min_chosen: float) -> tuple[int, int] | tuple[str, str]:
    """Indices (chosen, rejected), or (reason, detail) when no pair should be made."""
    rated = [(c.score, i) for i, c in enumerate(scored) if c.score is not None]
    if len(rated) < 2:
        return "judge_parse_error", f"only {len(rated)} of {len(scored)} candidates could be rated"
    best_score, best = max(rated, key=lambda x: (x[0], -x[1]))
    worst_score, worst = min(rated, key=lambda x: (x[0], x[1]))
    if best_score == worst_score:
        return "tie", f"all {len(rated)} rated candidates scored {best_score:g}"
    if best_score < min_chosen:
        return "all_bad", f"best score {best_score:g} < generate.preference.min_chosen_score={min_chosen:g}"
    if best_score - worst_score < min_margin:
        return "low_margin", (f"margin {best_score - worst_score:g} < generate.preference.min_margin={min_margin:g}")
    return best, worst


def _ref(p: Prompt) -> str:
    return f"{p.name}@{p.version}#{p.hash}"


_NUMBER_TOKEN = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*(?![\w])")


class PreferenceGenerator:
    """Makes one pair (or a reject) per sample; see the module docstring.

    ``judge``: the teacher that judges (default: the generating teacher); ``documents``: document id ->
    text, where hard negatives find their replacement facts; ``filter_cfg``: the filter stage's settings,
    whose number/name checks the hard negatives must fail."""

    def __init__(
        self,
        cfg: PreferenceConfig,
        teacher: Teacher,
        judge_prompt: Prompt,
        second: Teacher | None = None,
        *,
        judge: Teacher | None = None,
        candidate_prompt: Prompt | None = None,
        pairwise_prompt: Prompt | None = None,
        documents: Mapping[str, str] | None = None,
        filter_cfg: FilterConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.second = second
        self.judge = judge or teacher
        self.judge_prompt = judge_prompt
        self.candidate_prompt = candidate_prompt or load_prompt(cfg.candidate_prompt)
        self.pairwise_prompt = pairwise_prompt or load_prompt(cfg.pairwise_prompt)
        self.documents = documents or {}
        self.filter_cfg = (filter_cfg or FilterConfig()).model_copy(
            update={"check_numbers": True, "check_entities": True}
        )
        self.hard_negative_counts: Counter[str] = Counter()

    def config_hash(self) -> str:
        return content_id(
            self.cfg.model_dump(mode="json"),
            self.teacher.identity,
            self.second.identity if self.second else None,
            self.judge.identity,
            self.judge_prompt.hash,
            self.candidate_prompt.hash if self.cfg.grounded else None,
            self.pairwise_prompt.hash if self.cfg.pairwise else None,
            # hard negatives take their facts from the documents and must fail these checks
            self.filter_cfg.model_dump(mode="json") if self.cfg.hard_negatives else None,
            length=16,
        )

    def _candidate(
        self,
        source: str,
        teacher: Teacher | None,
        params: GenerationParams | None,
        text: str,
        sample: Sample,
        prompt: str = "",
    ) -> Candidate:
        if teacher is None:  # the sample's own response: its answer call's generator
            call = sample.provenance.teacher_calls[-1] if sample.provenance.teacher_calls else None
            return Candidate(
                text=text,
                source=source,
                backend=call.backend if call else "",
                model=call.model if call else "",
                params=call.params if call else "{}",
                prompt=f"{call.prompt_name}@{call.prompt_version}#{call.prompt_hash}" if call else "",
            )
        return Candidate(
            text=text,
            source=source,
            backend=teacher.identity["backend"],
            model=teacher.identity["model"],
            params=params.model_dump_json() if params else "{}",
            prompt=prompt,
        )

    def _candidate_messages(
        self, sample: Sample, prompt_msgs: list[dict[str, str]]
    ) -> tuple[list[dict[str, str]], str]:
        """What the candidate writers are sent, and the grounding template's reference ("" when none).

        A closed-book sample's answer was written from its chunk: the candidates get the chunk too. An
        open-book prompt carries its documents (and distractors) already and is sent as it is."""
        from datapipe.filter.content import carries_context

        if not self.cfg.grounded or not sample.provenance.context.strip() or carries_context(sample):
            return prompt_msgs, ""
        turns = [m for m in prompt_msgs if m["role"] != "system"]
        if not turns or turns[-1]["role"] != "user":
            return prompt_msgs, ""
        msgs = self.candidate_prompt.render(
            context=sample.provenance.context, conversation=turns[:-1], question=turns[-1]["content"]
        )
        return msgs, _ref(self.candidate_prompt)

    async def _compare(self, sample: Sample, cands: list[Candidate], first: int, second: int) -> PairwiseVerdict:
        msgs = self.pairwise_prompt.render(
            context=sample.provenance.context, prompt=sample.instruction, a=cands[first].text, b=cands[second].text
        )
        resp = await self.judge.complete(msgs, self.cfg.pairwise_params)
        try:
            v = parse_verdict(resp.text)
        except JudgeParseError:
            v = ""
        winner = {"A": "first", "B": "second", "tie": "tie", "": ""}[v]
        return PairwiseVerdict(first=first, second=second, winner=winner, raw=resp.text)

    async def pairs_for(self, sample: Sample) -> list[PreferencePair | Reject]:
        """The sample's pair (or reject), and its hard negative pair when asked for and the filters catch it."""
        out = await self.for_sample(sample)
        if not self.cfg.hard_negatives or not isinstance(out, PreferencePair):
            return [out]
        neg = self.hard_negative(out, sample)
        return [out] if neg is None else [out, neg]

    async def for_sample(self, sample: Sample) -> PreferencePair | Reject:
        # the conversation up to the last answer: a multi-turn sample's earlier turns stay in the prompt
        last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=len(sample.messages))
        prompt_msgs = [m.model_dump() for m in sample.messages[:last]]

        def reject(
            reason: str,
            detail: str,
            candidates: list[Candidate] | None = None,
            verdicts: list[PairwiseVerdict] | None = None,
        ) -> Reject:
            payload = json.dumps(
                {
                    "sample_id": sample.id,
                    "chunk_id": sample.provenance.chunk_id,
                    "candidates": [c.model_dump() for c in candidates or []],
                    "pairwise": [v.model_dump() for v in verdicts or []],
                }
            )
            return Reject(
                stage="preference",
                record_id=sample.id,
                reason=reason,
                detail=detail,
                source_path=sample.provenance.source_path,
                payload=payload,
            )

        jobs: list[tuple[str, Teacher, GenerationParams]] = [("teacher", self.teacher, p) for p in self.cfg.candidates]
        if self.second is not None:
            jobs.append((self.cfg.second_model_label, self.second, self.cfg.second_model_params))
        gen_msgs, grounding = self._candidate_messages(sample, prompt_msgs)

        async def generate(source: str, teacher: Teacher, params: GenerationParams) -> Candidate:
            resp = await teacher.complete(gen_msgs, params)
            return self._candidate(source, teacher, params, resp.text.strip(), sample, grounding)

        try:
            candidates = list(await asyncio.gather(*(generate(*j) for j in jobs)))
        except TeacherError as exc:
            return reject(teacher_failure(exc), f"candidates for {sample.id}: {exc}")
        if self.cfg.include_original:
            candidates.insert(0, self._candidate("original", None, None, sample.response, sample))

        async def rate(c: Candidate) -> Candidate:
            if not c.text:
                return c.model_copy(update={"rationale": "empty response", "score": None})
            msgs = self.judge_prompt.render(
                context=sample.provenance.context, prompt=sample.instruction, response=c.text
            )
            resp = await self.judge.complete(msgs, self.cfg.judge_params)
            try:
                score, rationale = parse_rating(resp.text)
            except JudgeParseError:
                return c.model_copy(update={"judge_raw": resp.text})
            return c.model_copy(update={"score": score, "rationale": rationale, "judge_raw": resp.text})

        try:
            rated = list(await asyncio.gather(*(rate(c) for c in candidates)))
        except TeacherError as exc:
            return reject(teacher_failure(exc), f"judge for {sample.id}: {exc}", candidates)
        verdict = form_pair(rated, self.cfg.min_margin, self.cfg.min_chosen_score)
        if isinstance(verdict[0], str):
            return reject(str(verdict[0]), str(verdict[1]), rated)
        best, worst = int(verdict[0]), int(verdict[1])
        verdicts: list[PairwiseVerdict] = []
        if self.cfg.pairwise:
            try:  # one order after the other: a scripted judge (tests) answers them in this order
                verdicts = [
                    await self._compare(sample, rated, best, worst),
                    await self._compare(sample, rated, worst, best),
                ]
            except TeacherError as exc:
                return reject(teacher_failure(exc), f"pairwise judge for {sample.id}: {exc}", rated)
            pairwise_reject = judge_orders(verdicts)
            if pairwise_reject:
                return reject(*pairwise_reject, rated, verdicts)
        chosen, rejected = rated[best], rated[worst]
        assert chosen.score is not None and rejected.score is not None
        if self.cfg.max_length_ratio and len(chosen.text) > self.cfg.max_length_ratio * max(1, len(rejected.text)):
            n_chosen, n_rejected = self._unsupported(chosen.text, sample), self._unsupported(rejected.text, sample)
            if n_chosen >= n_rejected:
                detail = (
                    f"chosen has {len(chosen.text)} chars vs {len(rejected.text)} "
                    f"(> generate.preference.max_length_ratio={self.cfg.max_length_ratio:g}) and {n_chosen} "
                    f"unsupported numbers/names vs {n_rejected}"
                )
                return reject("longer_not_better", detail, rated, verdicts)
        return PreferencePair(
            id=content_id(sample.id, self.config_hash(), [c.text for c in rated]),
            sample_id=sample.id,
            prompt=[Message(**m) for m in prompt_msgs],
            chosen=[Message(role="assistant", content=chosen.text)],
            rejected=[Message(role="assistant", content=rejected.text)],
            chosen_score=chosen.score,
            rejected_score=rejected.score,
            margin=chosen.score - rejected.score,
            candidates=rated,
            judge_model=self.judge.identity["model"],
            judge_prompt=_ref(self.judge_prompt),
            provenance=sample.provenance,
            pairwise=verdicts,
            length_diff=len(chosen.text) - len(rejected.text),
        )

    # ------------------------------------------------------------------------------------- grounding checks

    def _as_sample(self, sample: Sample, answer: str) -> Sample:
        """The sample with ``answer`` as its last response, for the filter stage's own checks."""
        last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=len(sample.messages))
        msgs = [*sample.messages[:last], Message(role="assistant", content=answer)]
        return sample.model_copy(update={"messages": msgs, "response": answer, "verdicts": {}})

    def _checks(self) -> dict[str, object]:
        from datapipe.filter import build_filters

        return dict(build_filters(self.filter_cfg))

    def _caught_by(self, sample: Sample, answer: str) -> list[tuple[str, str]]:
        """(reason, detail) of the filter stage's number and name checks that reject ``answer``."""
        checks = self._checks()
        out = []
        for name in ("numbers", "entities"):
            verdict = checks[name](self._as_sample(sample, answer))  # type: ignore[operator]
            if verdict:
                out.append(verdict)
        return out

    def _unsupported(self, answer: str, sample: Sample) -> int:
        """How many numbers and names in ``answer`` the sample's context and question do not support."""
        from datapipe.filter import content

        support = f"{sample.provenance.context}\n{content.prompt_text(sample)}"
        lang = self.filter_cfg.target_language or content.language_of_context(sample.provenance.context)
        return len(content.unsupported_numbers(answer, support)) + len(
            content.unsupported_entities(answer, support, lang)
        )

    # ------------------------------------------------------------------------------------- hard negatives

    def hard_negative(self, pair: PreferencePair, sample: Sample) -> PreferencePair | None:
        """The chosen answer with one supported number (else name) replaced by one from elsewhere in the
        document, as a pair against the chosen answer; None when there is no such fact or the filters do
        not catch the change (counted in ``hard_negative_counts``)."""
        from datapipe.filter import content

        chosen = pair.chosen[-1].content
        support = f"{sample.provenance.context}\n{content.prompt_text(sample)}"
        doc = self.documents.get(sample.provenance.document_id, "")
        lang = self.filter_cfg.target_language or content.language_of_context(sample.provenance.context)
        pick = int(content_id(pair.id, length=8), 16)
        edit: tuple[str, str, str] | None = None  # (kind, old, new)
        ours = [t for t in dict.fromkeys(_NUMBER_TOKEN.findall(chosen)) if not content.unsupported_numbers(t, support)]
        theirs = sorted({t for t in _NUMBER_TOKEN.findall(doc) if content.unsupported_numbers(t, support)})
        if ours and theirs:
            edit = ("number", ours[pick % len(ours)], theirs[pick % len(theirs)])
        else:
            names = _whole_names(
                [n for n in content.name_candidates(chosen, lang) if not content.unsupported_entities(n, support, lang)]
            )
            others = sorted(
                _whole_names(
                    [
                        n
                        for n in content.name_candidates(doc[:20000], lang)
                        if content.unsupported_entities(n, support, lang)
                    ]
                )
            )
            if names and others:
                name = names[pick % len(names)]
                # a name of the same shape reads as the same kind of fact ("Ralph Freeman" -> "William Armstrong")
                alike = [n for n in others if len(n.split()) == len(name.split())] or others
                edit = ("name", name, alike[pick % len(alike)])
        if edit is None:
            self.hard_negative_counts["no_fact_to_replace"] += 1
            return None
        kind, old, new = edit
        negative = re.sub(rf"(?<![\w]){re.escape(old)}(?![\w])", lambda _m: new, chosen, count=1)
        caught = self._caught_by(sample, negative) if negative != chosen else []
        if not caught:
            self.hard_negative_counts["not_caught"] += 1
            return None
        self.hard_negative_counts["made"] += 1
        base = next(c for c in pair.candidates if c.text == chosen)
        info = {"replaced": kind, "old": old, "new": new, "caught_by": [r for r, _ in caught]}
        neg = Candidate(
            text=negative,
            source="hard_negative",
            backend="synthetic",
            model=base.model,
            params=json.dumps(info),
            score=1.0,
            rationale=f"synthetic: {kind} {old!r} replaced by {new!r} from the same document; "
            + "; ".join(f"{r}: {d}" for r, d in caught),
        )
        return PreferencePair(
            id=content_id("hard-negative", pair.id, negative),
            sample_id=pair.sample_id,
            prompt=pair.prompt,
            chosen=pair.chosen,
            rejected=[Message(role="assistant", content=negative)],
            chosen_score=pair.chosen_score,
            rejected_score=1.0,  # by construction: it states a fact the source does not support
            margin=pair.chosen_score - 1.0,
            candidates=[base, neg],
            judge_model="synthetic:" + ",".join(r for r, _ in caught),
            judge_prompt=pair.judge_prompt,
            provenance=pair.provenance,
            length_diff=len(chosen) - len(negative),
        )


def judge_orders(verdicts: list[PairwiseVerdict]) -> tuple[str, str] | None:
    """(reason, detail) when the two orders do not both prefer the pointwise winner (``verdicts[0].first``)."""
    best = verdicts[0].first
    if any(not v.winner for v in verdicts):
        return "judge_parse_error", "the pairwise judge's reply names neither A nor B: " + " | ".join(
            v.raw[:80] for v in verdicts if not v.winner
        )
    preferred = [None if v.winner == "tie" else (v.first if v.winner == "first" else v.second) for v in verdicts]
    letter = {"first": "A", "second": "B", "tie": "tie"}
    said = ", ".join(f"{order}: {letter[v.winner]}" for order, v in zip(("A/B", "B/A"), verdicts, strict=False))
    if preferred[0] is None and preferred[1] is None:
        return "tie", f"the pairwise judge calls it a tie in both orders ({said})"
    if preferred[0] != preferred[1]:
        return "position_inconsistent", f"the pairwise verdicts change with the order ({said})"
    if preferred[0] != best:
        return "judges_disagree", f"both orders prefer the candidate the rubric scored lower ({said})"
    return None


def _whole_names(names: list[str]) -> list[str]:
    """The names not contained in a longer one of the list: spaCy's "Ralph Freeman" and the capitalised run
    "Freeman" are one name, and swapping the part alone would write "Ralph William Armstrong"."""
    unique = list(dict.fromkeys(names))
    return [n for n in unique if not any(n != m and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", m) for m in unique)]


def preference_documents(store: Any) -> dict[str, str]:
    """Document id -> its chunks' text in order, read from the run store: where hard negatives find the
    other numbers and names of a sample's document."""
    from datapipe.records import Chunk

    parts: dict[str, list[tuple[int, str]]] = {}
    for c in store.iter_records("chunk", Chunk):
        parts.setdefault(c.document_id, []).append((c.index, c.text))
    return {d: "\n".join(t for _, t in sorted(ps)) for d, ps in parts.items()}
