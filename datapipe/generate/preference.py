"""DPO preference pairs: several candidate responses per prompt, each rated by an LLM judge.

Candidates come from the teacher at different sampling settings, optionally a second model
(e.g. the student being trained) and the sample's own grounded response. A rubric judge
(``prompts/preference_judge``) scores each 1-5 with a rationale; every rating is kept. The
pair is chosen = best, rejected = worst, only when the margin reaches ``min_margin``.
Reject reasons: ``tie`` (all scores equal), ``low_margin``, ``all_bad`` (best below
``min_chosen_score``), ``judge_parse_error`` (fewer than two candidates could be rated;
the raw judge replies are kept), ``teacher_error``.
"""

from __future__ import annotations

import asyncio
import json
import re

from datapipe.config import GenerationParams, PreferenceConfig
from datapipe.errors import TeacherError
from datapipe.generate.prompts import Prompt
from datapipe.reasons import teacher_failure
from datapipe.records import Candidate, Message, PreferencePair, Reject, Sample, content_id
from datapipe.teacher import Teacher

_SCORE = re.compile(r"score\W{0,5}([1-5](?:\.\d+)?)(?!\s*[-–/]\s*\d)", re.IGNORECASE)
_OUT_OF = re.compile(r"(?<![\d.])([1-5])\s*/\s*5\b")
_FIRST = re.compile(r"(?<![\d.\-–/])([1-5])(?![\d]|\s*[-–/]\s*\d)")
_RATIONALE = re.compile(r"rationale\s*[:.-]\s*(.+?)(?=\n\s*score\b|\Z)", re.IGNORECASE | re.DOTALL)


class JudgeParseError(ValueError):
    pass


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


class PreferenceGenerator:
    def __init__(
        self, cfg: PreferenceConfig, teacher: Teacher, judge_prompt: Prompt, second: Teacher | None = None
    ) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.second = second
        self.judge_prompt = judge_prompt

    def config_hash(self) -> str:
        return content_id(
            self.cfg.model_dump(mode="json"),
            self.teacher.identity,
            self.second.identity if self.second else None,
            self.judge_prompt.hash,
            length=16,
        )

    def _candidate(
        self, source: str, teacher: Teacher | None, params: GenerationParams | None, text: str, sample: Sample
    ) -> Candidate:
        if teacher is None:  # the sample's own response: its answer call's generator
            call = sample.provenance.teacher_calls[-1] if sample.provenance.teacher_calls else None
            return Candidate(
                text=text,
                source=source,
                backend=call.backend if call else "",
                model=call.model if call else "",
                params=call.params if call else "{}",
            )
        return Candidate(
            text=text,
            source=source,
            backend=teacher.identity["backend"],
            model=teacher.identity["model"],
            params=params.model_dump_json() if params else "{}",
        )

    async def for_sample(self, sample: Sample) -> PreferencePair | Reject:
        # the conversation up to the last answer: a multi-turn sample's earlier turns stay in the prompt
        last = max((i for i, m in enumerate(sample.messages) if m.role == "assistant"), default=len(sample.messages))
        prompt_msgs = [m.model_dump() for m in sample.messages[:last]]

        def reject(reason: str, detail: str, candidates: list[Candidate] | None = None) -> Reject:
            payload = json.dumps(
                {
                    "sample_id": sample.id,
                    "chunk_id": sample.provenance.chunk_id,
                    "candidates": [c.model_dump() for c in candidates or []],
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
            jobs.append(("second_model", self.second, self.cfg.second_model_params))

        async def generate(source: str, teacher: Teacher, params: GenerationParams) -> Candidate:
            resp = await teacher.complete(prompt_msgs, params)
            return self._candidate(source, teacher, params, resp.text.strip(), sample)

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
            resp = await self.teacher.complete(msgs, self.cfg.judge_params)
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
        chosen, rejected = rated[int(verdict[0])], rated[int(verdict[1])]
        assert chosen.score is not None and rejected.score is not None
        jp = self.judge_prompt
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
            judge_model=self.teacher.identity["model"],
            judge_prompt=f"{jp.name}@{jp.version}#{jp.hash}",
            provenance=sample.provenance,
        )
