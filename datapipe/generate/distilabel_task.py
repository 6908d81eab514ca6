"""distilabel Tasks as datapipe generation kinds and as the filter's judge.

A distilabel Task is two functions: ``format_input(row) -> chat messages`` (its prompt) and
``format_output(text, row) -> dict`` (its parser). datapipe uses exactly those, on their own, inside its
own shard loop: the request goes through datapipe's :class:`~datapipe.teacher.Teacher`, so the response
cache, the budget, retries, adaptive concurrency, privacy and token accounting apply, and no distilabel
Pipeline (a second orchestrator) runs inside ours.

distilabel's Tasks require an ``llm`` at init; :class:`_NoCallLLM` fills that field and raises if anything
ever asks it to generate. A reply whose mapped output is missing or empty (distilabel's parsers return
``None`` there) is a ``parse_error`` (generation) or ``judge_parse_error`` (judge) reject with the raw text.
Provenance records the Task's import path as the prompt name, ``distilabel <version>`` as its version and a
hash of the rendered request as its hash.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

from datapipe.config import DistilabelJudgeConfig, DistilabelKindConfig, DistilabelStepConfig, GenerationParams
from datapipe.errors import ConfigError, TeacherError
from datapipe.filter import sample_reject
from datapipe.filter.scores import score_key
from datapipe.reasons import teacher_failure
from datapipe.records import Chunk, Message, Provenance, Reject, Sample, TeacherCall, content_id

SAMPLE_FIELDS = ("instruction", "response")


@cache
def distilabel_version() -> str:
    import distilabel

    return str(distilabel.__version__)


def _no_call_llm() -> Any:
    """An instance of a distilabel LLM that only fills a Task's ``llm`` field: datapipe's Teacher sends the
    requests, so generating through it is a bug and raises."""
    from distilabel.models.llms.base import LLM

    class _NoCallLLM(LLM):  # type: ignore[misc]
        @property
        def model_name(self) -> str:
            return "datapipe-teacher"

        def generate(self, inputs: Any, num_generations: int = 1, **kwargs: Any) -> Any:
            raise RuntimeError("datapipe sends distilabel Task requests through its Teacher, not the Task's llm")

    return _NoCallLLM()


def load_task(path: str, init: dict[str, Any], where: str) -> Any:
    """The distilabel Task class at import path ``path``, built with ``init`` and loaded (templates read)."""
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}.task: cannot import {path!r} ({exc}); name a distilabel Task class") from exc
    from distilabel.steps.tasks.base import _Task

    if not (isinstance(cls, type) and issubclass(cls, _Task)):
        raise ConfigError(f"{where}.task: {path!r} is not a distilabel Task class")
    quiet = logging.getLogger("distilabel")  # a Task built outside a distilabel Pipeline warns that it is
    level, quiet.level = quiet.level, logging.ERROR  # not in one: here that is the point
    try:
        task = cls(llm=_no_call_llm(), **init)
        task.load()
    except Exception as exc:  # distilabel raises pydantic and its own errors for bad init arguments
        raise ConfigError(f"{where}.init: {path} refused its arguments: {exc}") from exc
    finally:
        quiet.setLevel(level)
    return task


def _columns(spec: Any) -> dict[str, bool]:
    """A Task's ``inputs``/``outputs`` (a list, or a dict column -> required) as column -> required."""
    return dict(spec) if isinstance(spec, dict) else {c: True for c in spec}


def task_input(mapping: dict[str, str | list[str]], required: dict[str, bool], row: dict[str, Any]) -> dict[str, Any]:
    """The Task's input row: each mapped column from its row field(s), other columns from the same-named field."""
    out: dict[str, Any] = {}
    for col in required:
        field = mapping.get(col, col)
        if isinstance(field, list):
            out[col] = [row[f] for f in field]
        elif field in row:
            out[col] = row[field]
    return out


class _TaskRunner:
    """One Task with its mapping: render, send through the Teacher, parse; returns the parsed dict and the
    call's provenance, or raises ``TeacherError`` / ``ValueError`` (the reply does not parse)."""

    def __init__(self, task: Any, path: str, inputs: dict[str, str | list[str]], params: GenerationParams,
                 step: str) -> None:  # fmt: skip
        self.task = task
        self.path = path
        self.inputs = inputs
        self.params = params
        self.step = step
        self.required = _columns(task.inputs)

    def check_fields(self, fields: set[str], where: str) -> None:
        for col, req in self.required.items():
            field = self.inputs.get(col, col)
            missing = [f for f in (field if isinstance(field, list) else [field]) if f not in fields]
            if req and missing:
                raise ConfigError(
                    f"{where}.inputs: {self.path} needs column {col!r}; map it to one of {sorted(fields)}"
                )

    async def __call__(self, teacher: Any, row: dict[str, Any]) -> tuple[dict[str, Any], TeacherCall, str]:
        inp = task_input(self.inputs, self.required, row)
        messages = [{"role": m["role"], "content": m["content"]} for m in self.task.format_input(inp)]
        resp = await teacher.complete(messages, self.params)
        ident = teacher.identity
        call = TeacherCall(
            step=self.step,
            prompt_name=self.path,
            prompt_version=f"distilabel {distilabel_version()}",
            prompt_hash=content_id(messages, length=16),
            backend=ident["backend"],
            model=ident["model"],
            params=json.dumps(self.params.model_dump(mode="json"), sort_keys=True),
            raw_output=resp.text,
            input_tokens=resp.input_tokens,
            output_tokens=resp.output_tokens,
            cached=resp.cached,
        )
        try:
            parsed = self.task.format_output(resp.text, inp)
        except Exception as exc:  # a Task's parser may raise on text it did not expect
            raise ValueError(f"{self.path}.format_output: {exc}") from exc
        return dict(parsed or {}), call, resp.text


def _empty(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str | list) and not value)
        or (isinstance(value, list) and all(v is None or v == "" for v in value))
    )


class DistilabelKind:
    """A generation kind named ``name`` whose steps are distilabel Tasks (``generate.distilabel.<name>``)."""

    def __init__(self, name: str, cfg: DistilabelKindConfig, teacher: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.teacher = teacher
        where = f"generate.distilabel.{name}"
        self.steps: list[tuple[DistilabelStepConfig, _TaskRunner]] = []
        fields = {"text", "context", "heading", "title", "source_name", "language"}
        for i, step in enumerate(cfg.steps):
            runner = _TaskRunner(load_task(step.task, step.init, f"{where}.steps[{i}]"), step.task, step.inputs,
                                 step.params, f"distilabel:{name}:{i}")  # fmt: skip
            runner.check_fields(fields, f"{where}.steps[{i}]")
            fields |= set(step.outputs.values())
            self.steps.append((step, runner))
        missing = [f for f in SAMPLE_FIELDS if f not in fields]
        if missing:
            raise ConfigError(f"{where}: no step's outputs map to {missing}; a sample needs instruction and response")

    def config_hash(self) -> str:
        return content_id(self.name, self.cfg.model_dump(mode="json"), self.teacher.identity, distilabel_version(),
                          length=16)  # fmt: skip

    @staticmethod
    def base_row(chunk: Chunk) -> dict[str, Any]:
        from pathlib import PurePosixPath

        from datapipe.generate.instruction import source_language

        return {
            "text": chunk.text,
            "context": chunk.text,
            "heading": chunk.heading or "",
            "title": chunk.document_title or "",
            "source_name": PurePosixPath(chunk.source_path.replace("\\", "/")).stem.replace("_", " "),
            "language": source_language(chunk.text) or "",
        }

    async def for_chunk(self, chunk: Chunk) -> tuple[list[Sample], list[Reject]]:
        """The samples of one chunk: every step over every row, a list output fanning rows out."""
        rows: list[tuple[dict[str, Any], list[TeacherCall]]] = [(self.base_row(chunk), [])]
        rejects: list[Reject] = []
        chash = self.config_hash()

        def reject(reason: str, row: dict[str, Any], detail: str, raw: str = "") -> None:
            payload = json.dumps({"chunk_id": chunk.id, "kind": self.name, "row": row, "raw_output": raw}, default=str)
            rid = content_id(chash, chunk.id, {k: v for k, v in row.items() if k in SAMPLE_FIELDS})
            rejects.append(Reject(stage="generate", record_id=rid, reason=reason, detail=detail,
                                  source_path=chunk.source_path, payload=payload))  # fmt: skip

        for i, (step, runner) in enumerate(self.steps):

            async def one(row: dict[str, Any], calls: list[TeacherCall],
                          step: DistilabelStepConfig = step, runner: _TaskRunner = runner, i: int = i,
                          ) -> list[tuple[dict[str, Any], list[TeacherCall]]]:  # fmt: skip
                try:
                    parsed, call, raw = await runner(self.teacher, row)
                except TeacherError as exc:
                    reject(teacher_failure(exc), row, f"{self.name} step {i} ({step.task}) on chunk {chunk.id}: {exc}")
                    return []
                except ValueError as exc:
                    reject("parse_error", row, f"{self.name} step {i}: {exc}", "")
                    return []
                new = [(dict(row), [*calls, call])]
                for col, field in step.outputs.items():
                    value = parsed.get(col)
                    if _empty(value):
                        detail = f"{self.name} step {i} ({step.task}): output {col!r} is empty; chunk {chunk.id}"
                        reject("parse_error", row, detail, raw)
                        return []
                    if isinstance(value, list):
                        items = [v for v in value if v not in (None, "")][: self.cfg.max_rows_per_chunk]
                        new = [({**r, field: v}, c) for r, c in new for v in items]
                    else:
                        new = [({**r, field: value}, c) for r, c in new]
                return new

            results = await asyncio.gather(*(one(r, c) for r, c in rows))
            rows = [x for res in results for x in res][: self.cfg.max_rows_per_chunk]

        return [self.sample(chash, chunk, row, calls) for row, calls in rows], rejects

    def sample(self, chash: str, chunk: Chunk, row: dict[str, Any], calls: list[TeacherCall]) -> Sample:
        instruction, response = str(row["instruction"]).strip(), str(row["response"]).strip()
        return Sample(
            id=content_id(chash, chunk.id, instruction),
            kind="instruction",
            instruction=instruction,
            response=response,
            messages=[Message(role="user", content=instruction), Message(role="assistant", content=response)],
            provenance=Provenance(
                source_path=chunk.source_path,
                document_id=chunk.document_id,
                chunk_id=chunk.id,
                char_start=chunk.char_start,
                char_end=chunk.char_end,
                pages=chunk.pages,
                heading=chunk.heading,
                context=chunk.text,
                teacher_calls=calls,
                document_title=chunk.document_title,
                heading_path=chunk.heading_path,
            ),
        )


class DistilabelJudge:
    """The filter's judge as a distilabel scoring Task; the same interface as :class:`datapipe.filter.judge.QAJudge`
    (``teacher``, ``prompt_hashes``, ``run``). The score lands in ``sample.scores['judge_<score column>']``."""

    def __init__(self, cfg: DistilabelJudgeConfig, kinds: list[str], teacher: Any) -> None:
        self.cfg = cfg
        self.kinds = kinds
        self.teacher = teacher
        self.runner = _TaskRunner(load_task(cfg.task, cfg.init, "filter.judge.distilabel"), cfg.task, cfg.inputs,
                                  cfg.params, "judge")  # fmt: skip
        self.runner.check_fields({"instruction", "response", "context"}, "filter.judge.distilabel")
        if cfg.score not in _columns(self.runner.task.outputs):
            raise ConfigError(
                f"filter.judge.distilabel.score: {cfg.task} has no output {cfg.score!r}; "
                f"it has {sorted(_columns(self.runner.task.outputs))}"
            )

    @property
    def prompt_hashes(self) -> dict[str, str]:
        return {"distilabel": content_id(self.cfg.model_dump(mode="json"), distilabel_version(), length=16)}

    async def judge(self, sample: Sample) -> Sample | Reject:
        row = {"instruction": sample.instruction, "response": sample.response, "context": sample.provenance.context}

        def reject(reason: str, detail: str, raw: str = "") -> Reject:
            payload = json.dumps({"sample": json.loads(sample.model_dump_json()), "judge_output": raw})
            return sample_reject(sample, reason, detail, payload)

        try:
            parsed, call, raw = await self.runner(self.teacher, row)
        except TeacherError as exc:
            return reject(teacher_failure(exc), f"judge ({self.cfg.task}): {exc}")
        except ValueError as exc:
            return reject("judge_parse_error", str(exc))
        value = parsed.get(self.cfg.score)
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return reject("judge_parse_error", f"{self.cfg.task} gave no {self.cfg.score!r} score", raw)
        sample.provenance.teacher_calls.append(call)
        sample.scores[score_key(self.cfg.score)] = score
        if score < self.cfg.min_score:
            return reject(
                "low_score",
                f"judge {self.cfg.score} {score:g} < filter.judge.distilabel.min_score={self.cfg.min_score:g}",
                raw,
            )
        sample.verdicts["judge"] = "pass"
        return sample

    def applies_to(self, sample: Sample) -> bool:
        return sample.kind in self.kinds

    def run(self, samples: list[Sample], on_done: Callable[[], None] | None = None) -> list[Sample | Reject]:
        """Judge the samples of the judged kinds (concurrently); others pass through. Order is kept."""
        from datapipe.filter.judge import run_judge

        return run_judge(self.teacher, self.applies_to, self.judge, samples, on_done)
