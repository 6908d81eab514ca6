"""distilabel's own Tasks as a generation kind and as the filter's judge, against a real llama.cpp server.

The kind chains ``SelfInstruct`` (questions from a chunk) and ``TextGeneration`` with a template (the
answer from the chunk); the judge is ``UltraFeedback`` (overall-rating). The requests go through datapipe's
Teacher: the generator straight to the server, the judge through the fault proxy in front of it, whose
scripted replies make the judgement exact (the 135M model rarely writes UltraFeedback's format).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datapipe.cli import BUDGET_EXIT, app
from datapipe.records import Sample
from datapipe.store import RunStore
from tests.conftest import TINY_TEACHER_FILTER, LlamaServer, free_port, write_config
from tests.integration.faultproxy import FaultProxy

pytestmark = pytest.mark.integration
runner = CliRunner()

ANSWER_TEMPLATE = "Answer the question using only the text.\n\nText: {{ context }}\n\nQuestion: {{ question }}"
SELF_INSTRUCT_KIND: dict[str, Any] = {
    "max_rows_per_chunk": 2,
    "steps": [
        {
            "task": "distilabel.steps.tasks.SelfInstruct",
            "init": {"num_instructions": 2},
            "inputs": {"input": "text"},
            "outputs": {"instructions": "instruction"},
            "params": {"max_new_tokens": 48, "temperature": 0.7, "seed": 1},
        },
        {
            "task": "distilabel.steps.tasks.TextGeneration",
            "init": {"template": ANSWER_TEMPLATE, "columns": ["context", "question"]},
            "inputs": {"question": "instruction"},
            "outputs": {"generation": "response"},
            "params": {"max_new_tokens": 48, "temperature": 0.3, "seed": 1},
        },
    ],
}
GOOD, BAD = "Rating: 4\nRationale: The answer is supported by the text.", "Rating: 2\nRationale: Vague."


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _config(tmp_path: Path, corpus_docs: Path, teacher: dict[str, Any], judge_url: str, **extra: Any) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copy(corpus_docs / "handbook-1p.docx", docs / "handbook-1p.docx")
    judge_teacher = {"backend": "openai", "model": "judge-model", "base_url": judge_url, "cache": False}
    return write_config(
        tmp_path / "pipeline.yaml",
        run_id="dl",
        store="runs",
        sources=["docs"],
        teacher=teacher,
        generate={"kinds": [], "max_chunks": 3, "distilabel": {"selfinstruct": SELF_INSTRUCT_KIND}},
        filter={
            "grounding": {"enabled": False},
            "near_dedup": {"enabled": False},
            "semantic_dedup": {"enabled": False},
            "min_response_chars": 1,
            "min_instruction_chars": 1,
            "min_response_tokens": 0,
            "max_repeated_ngram_ratio": 1,
            **TINY_TEACHER_FILTER,
            "judge": {
                "enabled": True,
                "kinds": ["instruction"],
                "teacher": judge_teacher,
                "distilabel": {
                    "task": "distilabel.steps.tasks.UltraFeedback",
                    "init": {"aspect": "overall-rating"},
                    "inputs": {"generations": ["response"]},
                    "score": "ratings",
                    "min_score": 3,
                },
            },
        },
        **extra,
    )


def test_distilabel_kind_and_judge_end_to_end_then_rerun_makes_zero_requests(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer
) -> None:
    base = llama_server.base_url.removesuffix("/v1")
    teacher = {"backend": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 2}
    with FaultProxy(base, free_port(), [f"content:{GOOD}", f"content:{BAD}"] * 20) as proxy:
        config = _config(tmp_path, corpus_docs, teacher, proxy.base_url)
        run_dir = tmp_path / "runs" / "dl"
        _invoke("extract", str(config))
        _invoke("chunk", str(run_dir))
        _invoke("generate", str(run_dir))
        store = RunStore(run_dir)
        samples = list(store.iter_records("generate", Sample))
        assert samples, "SelfInstruct + TextGeneration gave no sample"
        gen = json.loads((run_dir / "samples" / "manifest.json").read_text())
        t = gen["teacher"]
        assert t["calls"] > 0 and t["input_tokens"] > 0 and t["output_tokens"] > 0
        served = llama_server.chat_requests()
        for s in samples:
            calls = s.provenance.teacher_calls
            assert [c.prompt_name for c in calls] == [
                "distilabel.steps.tasks.SelfInstruct",
                "distilabel.steps.tasks.TextGeneration",
            ]
            assert all(c.prompt_version.startswith("distilabel 1.") and c.prompt_hash for c in calls)
            assert s.kind == "instruction" and s.instruction and s.response
            assert s.instruction in calls[0].raw_output  # SelfInstruct's own parser split the lines
            assert calls[1].raw_output.strip() == s.response
        # every call's tokens are counted once: distinct calls in the samples cost no more than the manifest says
        distinct = {(c.prompt_hash, c.raw_output): c for s in samples for c in s.provenance.teacher_calls}
        assert sum(c.input_tokens + c.output_tokens for c in distinct.values()) <= (
            t["input_tokens"] + t["output_tokens"]
        )

        _invoke("filter", str(run_dir))
        flt = json.loads((run_dir / "filtered" / "manifest.json").read_text())
        kept = list(store.iter_records("filter", Sample))
        rejects = list(store.iter_rejects("filter"))
        judged = len(proxy.requests)
        assert judged == len(kept) + sum(r.reason == "low_score" for r in rejects)
        assert len(kept) == (judged + 1) // 2 and judged > 0  # the scripted replies alternate 4 and 2
        for s in kept:
            assert s.verdicts["judge"] == "pass"
            assert s.scores == {"judge_ratings": 4.0}
            call = s.provenance.teacher_calls[-1]
            assert (call.step, call.prompt_name, call.raw_output) == (
                "judge", "distilabel.steps.tasks.UltraFeedback", GOOD,
            )  # fmt: skip
        assert all("< filter.judge.distilabel.min_score=3" in r.detail for r in rejects if r.reason == "low_score")
        assert flt["teacher"]["step"] == "judge" and flt["teacher"]["calls"] == judged

        # a re-run over unchanged inputs sends nothing to the server or the judge
        _invoke("generate", str(run_dir))
        _invoke("filter", str(run_dir))
        assert llama_server.chat_requests() == served and len(proxy.requests) == judged  # judge replies: scripted
        gen2 = json.loads((run_dir / "samples" / "manifest.json").read_text())
        assert gen2["teacher"]["calls"] == 0 and gen2["counts"]["shards_reused"] == gen2["counts"]["shards"]
        assert sorted(r.id for r in store.iter_records("generate", Sample)) == sorted(s.id for s in samples)


def test_distilabel_kind_draws_on_the_run_budget(tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer) -> None:
    """The Task's requests are the Teacher's: a token cap stops the stage cleanly, the same command resumes
    from the response cache, and no request is sent twice."""
    teacher = {"backend": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 1}
    config = _config(tmp_path, corpus_docs, teacher, llama_server.base_url, budget={"max_tokens": 700})
    run_dir = tmp_path / "runs" / "dl"
    _invoke("extract", str(config))
    _invoke("chunk", str(run_dir))
    attempts = []
    for _ in range(15):
        before = llama_server.chat_requests()
        result = runner.invoke(app, ["generate", str(run_dir)], catch_exceptions=False)
        attempts.append((result.exit_code, llama_server.chat_requests() - before))
        if result.exit_code == 0:
            break
        assert result.exit_code == BUDGET_EXIT and "budget" in result.output, result.output
    assert attempts[0][0] == BUDGET_EXIT and attempts[-1][0] == 0, attempts
    assert all(n > 0 for _, n in attempts[:-1]), attempts  # each stopped attempt got further
    total = sum(n for _, n in attempts)
    with sqlite3.connect(tmp_path / "runs" / ".cache" / "teacher.sqlite") as db:
        assert total == db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]  # none sent twice
    gen = json.loads((run_dir / "samples" / "manifest.json").read_text())
    assert gen["teacher"]["input_tokens"] + gen["teacher"]["output_tokens"] <= 700
