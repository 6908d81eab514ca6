"""LLM-as-judge for every sample kind: faithfulness to the context and question/instruction quality.

Each kind has its own rubric (``prompts/<kind>_judge``). Scores (1-5) land in ``sample.scores`` under
:data:`datapipe.filter.scores.SCORE_KEYS` (the one convention that curate, the report and exports read) and the judge's
call in the sample's provenance. Below-threshold samples become ``low_faithfulness`` /
``low_quality`` rejects; a judge reply that does not parse is a ``judge_parse_error`` reject with
the raw text kept.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping

from datapipe.config import JudgeConfig
from datapipe.errors import TeacherError
from datapipe.filter import sample_reject
from datapipe.filter.scores import score_key
from datapipe.generate.prompts import Prompt
from datapipe.reasons import teacher_failure
from datapipe.records import Reject, Sample, TeacherCall
from datapipe.teacher import Teacher

_SCORE = {
    # a score, not the "1-5" of the instructions echoed back
    "faithfulness": re.compile(r"faithful(?:ness)?\W{0,5}(\d(?:\.\d+)?)(?!\s*[-–/]\s*\d)", re.IGNORECASE),
    "quality": re.compile(r"quality\W{0,5}(\d(?:\.\d+)?)(?!\s*[-–/]\s*\d)", re.IGNORECASE),
}


class JudgeParseError(ValueError):
    pass


def parse_scores(text: str) -> dict[str, float]:
    """Both scores from the judge's reply, each within 1-5, or JudgeParseError."""
    scores: dict[str, float] = {}
    for name, rx in _SCORE.items():
        m = rx.search(text)
        if not m:
            raise JudgeParseError(f"no '{name.capitalize()}: <1-5>' line in the judge's reply")
        value = float(m.group(1))
        if not 1 <= value <= 5:
            raise JudgeParseError(f"{name} score {value:g} is outside 1-5")
        scores[name] = value
    return scores


class QAJudge:
    """The judge: one prompt for all kinds, or a rubric per kind (``{"qa": ..., "instruction": ...}``)."""

    def __init__(self, cfg: JudgeConfig, teacher: Teacher, prompt: Prompt | Mapping[str, Prompt]) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.prompts: dict[str, Prompt] = {k: prompt for k in cfg.kinds} if isinstance(prompt, Prompt) else dict(prompt)

    @property
    def prompt_hashes(self) -> dict[str, str]:
        return {k: p.hash for k, p in sorted(self.prompts.items())}

    def applies_to(self, sample: Sample) -> bool:
        return sample.kind in self.cfg.kinds and sample.kind in self.prompts

    async def judge(self, sample: Sample) -> Sample | Reject:
        context = sample.provenance.context
        prompt = self.prompts[sample.kind]
        messages = prompt.render(context=context, question=sample.instruction, answer=sample.response)

        def reject(reason: str, detail: str, raw: str = "") -> Reject:
            payload = json.dumps({"sample": json.loads(sample.model_dump_json()), "judge_output": raw})
            return sample_reject(sample, reason, detail, payload)

        try:
            resp = await self.teacher.complete(messages, self.cfg.params)
        except TeacherError as exc:
            return reject(teacher_failure(exc), f"judge: {exc}")
        try:
            scores = parse_scores(resp.text)
        except JudgeParseError as exc:
            return reject("judge_parse_error", str(exc), resp.text)
        ident = self.teacher.identity
        sample.provenance.teacher_calls.append(
            TeacherCall(
                step="judge",
                prompt_name=prompt.name,
                prompt_version=prompt.version,
                prompt_hash=prompt.hash,
                backend=ident["backend"],
                model=ident["model"],
                params=self.cfg.params.model_dump_json(),
                raw_output=resp.text,
                input_tokens=resp.input_tokens,
                output_tokens=resp.output_tokens,
                cached=resp.cached,
            )
        )
        sample.scores.update({score_key(k): v for k, v in scores.items()})
        if scores["faithfulness"] < self.cfg.min_faithfulness:
            return reject(
                "low_faithfulness",
                f"judge faithfulness {scores['faithfulness']:g} < "
                f"filter.judge.min_faithfulness={self.cfg.min_faithfulness:g}",
                resp.text,
            )
        if scores["quality"] < self.cfg.min_quality:
            return reject(
                "low_quality",
                f"judge quality {scores['quality']:g} < filter.judge.min_quality={self.cfg.min_quality:g}",
                resp.text,
            )
        sample.verdicts["judge"] = "pass"
        return sample

    def run(self, samples: list[Sample], on_done: Callable[[], None] | None = None) -> list[Sample | Reject]:
        """Judge the samples this judge applies to (concurrently); others pass through. Order is kept."""
        return run_judge(self.teacher, self.applies_to, self.judge, samples, on_done)


def run_judge(
    teacher: Teacher,
    applies_to: Callable[[Sample], bool],
    judge: Callable[[Sample], Awaitable[Sample | Reject]],
    samples: list[Sample],
    on_done: Callable[[], None] | None = None,
) -> list[Sample | Reject]:
    """``judge`` each sample that ``applies_to`` selects, concurrently in one teacher session; the others
    pass through. Order is kept; ``on_done`` is called once per sample (progress). Every judge runs this."""

    async def one(s: Sample) -> Sample | Reject:
        out = await judge(s) if applies_to(s) else s
        if on_done:
            on_done()
        return out

    async def main() -> list[Sample | Reject]:
        async with teacher.session():
            return list(await asyncio.gather(*(one(s) for s in samples)))

    return asyncio.run(main())
