"""Table-aware generation: a chunk holding a table gets the table question prompt, and a cell question's
answer is the value in the row and column the question names.

The teacher's replies are scripted through the fault proxy (an exact judgement: which prompt went out
and what comes back); every reply is injected, so no upstream model is contacted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datapipe.chunk import SemanticChunker
from datapipe.config import ChunkConfig, ExtractConfig, GenerateConfig, GenerationParams, TeacherConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.generate.instruction import InstructionGenerator, has_table
from datapipe.generate.prompts import load_prompt
from datapipe.records import Document, Sample
from datapipe.teacher import Teacher
from tests.conftest import free_port
from tests.doc_kit import long_10k_html
from tests.integration.faultproxy import FaultProxy

pytestmark = pytest.mark.integration
QUESTION = "What were Galaxy Gaming's cash and cash equivalents at December 31, 2020?"


def test_table_chunk_gets_cell_questions_answered_from_its_row(tmp_path: Path) -> None:
    path = tmp_path / "gmgi-10k.html"
    path.write_text(long_10k_html(pages=6), encoding="utf-8")
    doc = extract_file(SourceFile(path), ExtractConfig())
    assert isinstance(doc, Document)
    chunks = SemanticChunker(ChunkConfig()).chunk(doc)
    table = next(c for c in chunks if "Cash and cash equivalents" in c.text)
    plain = next(c for c in chunks if not has_table(c.text))
    assert has_table(table.text)
    script = [f"content:{QUESTION}", "content:$5,993,388", "content:What do casinos license?", "content:Games."]
    with FaultProxy("http://127.0.0.1:9", free_port(), script) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="teacher", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = GenerateConfig(questions_per_chunk=1, question_params=GenerationParams(seed=1))
        gen = InstructionGenerator(
            cfg,
            teacher,
            load_prompt("instruction_questions"),
            load_prompt("instruction_answer"),
            table_prompt=load_prompt("table_questions"),
        )

        async def go() -> tuple[list[Sample], list[Sample]]:
            async with teacher.session():
                t, _ = await gen.for_chunk(table)
                p, _ = await gen.for_chunk(plain)
                return t, p

        on_table, on_plain = asyncio.run(go())
    (sample,) = on_table
    calls = sample.provenance.teacher_calls
    assert [c.prompt_name for c in calls] == ["table_questions", "instruction_answer"]
    assert sample.instruction == QUESTION and sample.response == "$5,993,388"
    context = sample.provenance.context
    header = next(line for line in context.splitlines() if line.startswith("|"))
    row = next(line for line in context.splitlines() if line.startswith("| Cash and cash equivalents"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[columns.index("December 31, 2020")] == sample.response  # the named row and column hold it
    assert [c.prompt_name for c in on_plain[0].provenance.teacher_calls] == [
        "instruction_questions",
        "instruction_answer",
    ]
    assert (
        gen.config_hash()
        != InstructionGenerator(
            cfg, teacher, load_prompt("instruction_questions"), load_prompt("instruction_answer")
        ).config_hash()
    )
