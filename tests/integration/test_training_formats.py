"""Training formats of instruction data: closed-book, open-book (RAFT-style distractors) and multi-turn.

The chunks come from the real extract and chunker over two small Markdown documents. Where the exact
rows matter, the teacher's replies are scripted through the fault proxy in front of the real
llama.cpp server (``content:<text>`` entries, one teacher request at a time, so the order of the
requests is fixed): questions with their kinds, answers, follow-ups. The rows are then exported in
every format, loaded with ``datasets``, checked with TRL's conversational checks and trained one SFT
step. A run of the whole flow on the embedded teacher checks the plumbing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datapipe.config import ChunkConfig, ExtractConfig, FilterConfig, GenerateConfig, PipelineConfig, TeacherConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.filter import filter_samples
from datapipe.records import Chunk, Document, Reject, Sample
from datapipe.teacher import Teacher
from tests.conftest import LlamaServer, free_port, write_config
from tests.integration.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

HANDBOOK = """# Acme Corp Staff Handbook

## Vacation

Acme Corp employees get 25 vacation days per year. Unused vacation days carry over until the end of March
of the next year.

Employees request vacation in the HR portal at least two weeks ahead. A manager approves each request
within three working days.

## Expenses

Travel expenses are refunded within 30 days. Receipts must be uploaded to the finance tool. Meals abroad
are covered up to 60 euros a day.
"""

GARDEN = """# Rose Garden Care

## Pruning

Roses are pruned in early spring when the forsythia blooms. Cut each cane just above an outward-facing bud
at a 45 degree angle.

## Watering

Water roses deeply twice a week in summer. Water the soil, not the leaves, to keep black spot away.
"""

QUESTIONS = (
    "fact: How many vacation days do Acme Corp employees get per year?\n"
    "fact: How many vacation days do Acme Corp employees get each year?\n"
    "procedure: How does an Acme Corp employee request vacation?"
)
ANSWER_DAYS = "Acme Corp employees get 25 vacation days per year."
ANSWER_REQUEST = (
    'Evidence: "Employees request vacation in the HR portal at least two weeks ahead."\n'
    "In the HR portal, two weeks ahead."
)


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Chunk]]:
    """Chunks of the two documents by file stem, from the real extract and chunker."""
    from datapipe.chunk import SemanticChunker

    folder = tmp_path_factory.mktemp("docs")
    chunker = SemanticChunker(ChunkConfig(min_tokens=16, max_tokens=96))
    out: dict[str, list[Chunk]] = {}
    for name, text in (("handbook", HANDBOOK), ("garden", GARDEN)):
        path = folder / f"{name}.md"
        path.write_text(text, encoding="utf-8")
        doc = extract_file(SourceFile(path), ExtractConfig())
        assert isinstance(doc, Document), doc
        out[name] = chunker.chunk(doc)
    return out


def vacation(chunks: dict[str, list[Chunk]]) -> Chunk:
    return next(c for c in chunks["handbook"] if "25 vacation days" in c.text)


def scripted_teacher(proxy: FaultProxy) -> Teacher:
    cfg = TeacherConfig(
        backend="openai",
        model="smollm2",
        base_url=proxy.base_url,
        cache=False,
        max_concurrency=1,
        adaptive_concurrency=False,
        max_retries=0,
    )
    return Teacher(cfg)


def generate(
    llama_server: LlamaServer,
    script: list[str],
    gen: GenerateConfig,
    chunk: Chunk,
    neighbours: list[Chunk],
    distractors: list[Chunk],
) -> tuple[list[Sample], list[Reject], FaultProxy]:
    """Samples of ``chunk`` with the teacher's replies scripted through the fault proxy."""
    from datapipe.pipeline import instruction_generator

    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy:
        cfg = PipelineConfig(sources=["x"], generate=gen)
        instr = instruction_generator(cfg, scripted_teacher(proxy))

        async def go() -> tuple[list[Sample], list[Reject]]:
            async with instr.teacher.session():
                return await instr.for_chunk(chunk, neighbours, distractors)

        samples, rejects = asyncio.run(go())
    return samples, rejects, proxy


def test_headings_and_title_reach_the_chunks_and_the_question_prompt(chunks: dict[str, list[Chunk]]) -> None:
    from datapipe.pipeline import instruction_generator

    c = vacation(chunks)
    assert c.document_title == "Acme Corp Staff Handbook"
    assert c.heading_path == ["Acme Corp Staff Handbook", "Vacation"]
    instr = instruction_generator(PipelineConfig(sources=["x"]), None)
    prompt = instr.questions.format_input(instr.base_row(c))[-1]["content"]
    assert "Document: Acme Corp Staff Handbook\nSection: Acme Corp Staff Handbook > Vacation" in prompt
    assert 'Never refer to "the text"' in prompt and "fact, explanation, procedure, comparison" in prompt
    assert "Write the questions in English." in prompt  # the source's language, detected
    german = instruction_generator(PipelineConfig(sources=["x"], generate={"language": "German"}), None)
    assert "Write the questions in German." in german.questions.format_input(german.base_row(c))[-1]["content"]
    old = instruction_generator(PipelineConfig(sources=["x"], generate={"prompt_version": "v1"}), None)
    assert "questions about the text above" in old.questions.format_input(old.base_row(c))[-1]["content"]


def test_closed_and_open_book_rows_with_a_near_duplicate_question_dropped(
    llama_server: LlamaServer, chunks: dict[str, list[Chunk]]
) -> None:
    """Three questions, one nearly repeating another: two answers are requested, not three. The first kept
    question is dealt closed-book, the second open-book (the chunk among two other documents' chunks)."""
    c = vacation(chunks)
    garden = chunks["garden"]
    gen = GenerateConfig(questions_per_chunk=3, formats={"instruction": ["closed_book", "open_book"]})
    first, second = ("closed_book", "open_book") if c.index % 2 == 0 else ("open_book", "closed_book")
    script = [f"content:{QUESTIONS}", f"content:{ANSWER_DAYS}", f"content:{ANSWER_REQUEST}"]
    samples, rejects, proxy = generate(llama_server, script, gen, c, chunks["handbook"], garden[:2])
    assert len(proxy.arrivals) == 3  # the duplicate's answer was never requested
    [dup] = rejects
    assert dup.reason == "duplicate_question" and "each year" in dup.detail
    assert json.loads(dup.payload)["answer_tokens_saved"] > gen.answer_params.max_new_tokens
    by_type = {s.question_type: s for s in samples}
    days, request = by_type["fact"], by_type["procedure"]
    assert [days.training_format, request.training_format] == [first, second]
    closed, opened = (days, request) if first == "closed_book" else (request, days)
    assert closed.context_in_row is False and closed.provenance.distractor_chunk_ids == []
    assert closed.messages[0].content in (QUESTIONS.splitlines()[0][6:], QUESTIONS.splitlines()[2][11:])
    assert opened.context_in_row is True
    assert sorted(opened.provenance.distractor_chunk_ids) == sorted(g.id for g in garden[:2])
    user = opened.messages[0].content
    assert opened.instruction == user and user.endswith(
        f"Question: {opened.messages[0].content.split('Question: ')[-1]}"
    )
    for shown in [c, *garden[:2]]:
        assert shown.text in user
    assert user.count("Document ") == 3 and "(Acme Corp Staff Handbook)" in user and "(Rose Garden Care)" in user
    assert days.response == ANSWER_DAYS and request.response == ANSWER_REQUEST
    assert opened.provenance.context == c.text  # graded against its own chunk, not the distractors


def test_open_book_order_is_seeded_and_deterministic(chunks: dict[str, list[Chunk]]) -> None:
    from datapipe.pipeline import instruction_generator, pick_distractors

    shards = [("a", chunks["handbook"]), ("b", chunks["garden"])]
    ids = {c.id for _, cs in shards for c in cs}
    cfg = PipelineConfig(sources=["x"], generate={"formats": {"instruction": ["open_book"]}})
    one, two = pick_distractors(shards, ids, cfg.generate), pick_distractors(shards, ids, cfg.generate)
    assert {k: [d.id for d in v] for k, v in one.items()} == {k: [d.id for d in v] for k, v in two.items()}
    for c in chunks["handbook"]:  # other documents only, as many as there are (garden has fewer than 2?)
        assert all(d.document_id != c.document_id for d in one[c.id])
        assert len(one[c.id]) == min(2, len(chunks["garden"]))
    instr = instruction_generator(cfg, None)
    c = vacation(chunks)
    orders = {tuple(d.id for d in instr.open_book_documents(c, one[c.id], f"Question {n}?")) for n in range(12)}
    assert len(orders) > 1  # the source chunk is not always in the same place
    assert instr.open_book_documents(c, one[c.id], "Q?") == instr.open_book_documents(c, one[c.id], "Q?")


def test_multi_turn_follow_ups_stay_on_the_chunk_and_its_neighbours_and_every_turn_is_filtered(
    llama_server: LlamaServer, chunks: dict[str, list[Chunk]]
) -> None:
    c = vacation(chunks)
    gen = GenerateConfig(questions_per_chunk=1, multi_turn={"turns": 3, "neighbours": 1})
    replies = [
        "fact: How many vacation days do Acme Corp employees get per year?",
        ANSWER_DAYS,
        "How long do unused days carry over?",
        "Until the end of March of the next year.",
        "How are Acme Corp travel expenses refunded?",
        "Within 30 days, after the receipts are uploaded to the finance tool.",
    ]
    samples, rejects, proxy = generate(llama_server, [f"content:{r}" for r in replies], gen, c, chunks["handbook"], [])
    assert rejects == [] and len(proxy.arrivals) == 6
    [s] = samples
    assert [(m.role, m.content) for m in s.messages] == [
        (role, text) for pair in zip(replies[0::2], replies[1::2], strict=True) for role, text in
        zip(("user", "assistant"), (pair[0].removeprefix("fact: "), pair[1]), strict=True)
    ]  # fmt: skip
    assert (s.instruction, s.response) == (replies[4], replies[5])
    assert [t.step for t in s.provenance.teacher_calls] == [
        "questions",
        "answer",
        "followup",
        "answer",
        "followup",
        "answer",
    ]
    neighbours = [n for n in chunks["handbook"] if abs(n.index - c.index) == 1]
    assert s.provenance.neighbour_chunk_ids == [n.id for n in sorted(neighbours, key=lambda n: n.index)]
    assert all(n.text in s.provenance.context for n in [c, *neighbours]) and s.context_in_row is False
    kept = list(filter_samples([s], FilterConfig(languages=["en"])))
    assert kept == [s]

    bad = s.model_copy(deep=True)
    bad.messages[3].content = "I'm sorry, I cannot help with that question about vacation."
    [r] = list(filter_samples([bad], FilterConfig()))
    assert isinstance(r, Reject) and r.reason == "refusal" and r.detail.startswith("turn 2 of 3:")


def test_grounding_checks_every_turn(llama_server: LlamaServer, chunks: dict[str, list[Chunk]]) -> None:
    from datapipe.chunk import load_embedder
    from datapipe.config import GroundingConfig
    from datapipe.filter.grounding import check_grounding

    c = vacation(chunks)
    gen = GenerateConfig(questions_per_chunk=1, multi_turn={"turns": 2, "neighbours": 0})
    replies = [
        "fact: How many vacation days do Acme Corp employees get per year?",
        ANSWER_DAYS,
        "Who approves the vacation requests?",
        "A manager approves each request within three working days.",
    ]
    [s], _, _ = generate(llama_server, [f"content:{r}" for r in replies], gen, c, chunks["handbook"], [])
    model = load_embedder(None)
    assert check_grounding([s], GroundingConfig(), model) == {}
    off = s.model_copy(deep=True)
    off.messages[3].content = "Quantum chromodynamics describes gluons binding quarks inside protons."
    assert set(check_grounding([off], GroundingConfig(), model)) == {s.id}


@pytest.fixture(scope="module")
def format_samples(llama_server: LlamaServer, chunks: dict[str, list[Chunk]]) -> list[Sample]:
    """Open-book, closed-book and multi-turn samples generated with scripted replies."""
    c = vacation(chunks)
    both = GenerateConfig(questions_per_chunk=3, formats={"instruction": ["closed_book", "open_book"]})
    script = [f"content:{QUESTIONS}", f"content:{ANSWER_DAYS}", f"content:{ANSWER_REQUEST}"]
    single, _, _ = generate(llama_server, script, both, c, chunks["handbook"], chunks["garden"][:2])
    multi = GenerateConfig(questions_per_chunk=1, multi_turn={"turns": 2})
    replies = ["fact: How many vacation days do Acme Corp employees get?", ANSWER_DAYS,
               "Who approves the requests?", "A manager approves each request within three working days."]  # fmt: skip
    conv, _, _ = generate(llama_server, [f"content:{r}" for r in replies], multi, c, chunks["handbook"], [])
    samples = single + conv
    assert {s.training_format for s in samples} == {"closed_book", "open_book"} and len(conv[0].messages) == 4
    return samples * 4  # enough rows for a train and a validation split


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt", "alpaca", "text"])
def test_format_rows_load_and_train_one_sft_step(fmt: str, format_samples: list[Sample], tmp_path: Path) -> None:
    """Every export format of open-book and multi-turn rows: loads with datasets, passes TRL's conversational
    check (the message formats), and SFTTrainer prepares it and trains one step."""
    import runpy

    import datasets
    from trl import SFTTrainer
    from trl.data_utils import is_conversational

    from datapipe.export import ExportOptions, export_records
    from datapipe.export.split import split_point
    from tests.trainer_kit import sft_args, tiny_model_and_tokenizer

    samples = [s.model_copy(update={"id": f"{s.id}-{i}"}) for i, s in enumerate(format_samples)]
    # ids follow the prompts' text: a fixed fraction can put every row in train; cut between the ids instead
    points = sorted(split_point(s.id) for s in samples)
    cut = (points[-4] + points[-3]) / 2  # three rows in validation, the rest in train
    result = export_records(samples, ExportOptions(fmt=fmt, split=cut), tmp_path / fmt)
    ds = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in result.files.items()})
    rows = {r["id"].rsplit("-", 1)[0]: r for r in ds["train"]} | {
        r["id"].rsplit("-", 1)[0]: r for r in ds["validation"]
    }
    opened = next(s for s in format_samples if s.context_in_row)
    conv = next(s for s in format_samples if len(s.messages) == 4)
    if fmt == "chatml":
        assert is_conversational(ds["train"][0])
        assert rows[opened.id]["messages"][0]["content"] == opened.messages[0].content
        assert [m["content"] for m in rows[conv.id]["messages"]] == [m.content for m in conv.messages]
    elif fmt == "sharegpt":
        assert [t["from"] for t in rows[conv.id]["conversations"]] == ["human", "gpt", "human", "gpt"]
    elif fmt == "alpaca":
        assert rows[conv.id]["history"] == [[conv.messages[0].content, conv.messages[1].content]]
        assert rows[opened.id]["instruction"] == opened.instruction
    else:
        assert (
            conv.messages[2].content in rows[conv.id]["text"] and opened.provenance.context in rows[opened.id]["text"]
        )
    splits = runpy.run_path(str(result.out_dir / "trl_example.py"), run_name="trl_example")["load_splits"]()
    if fmt != "text":
        assert is_conversational(splits["train"][0]) or "prompt" in splits["train"].column_names
    model, tok = tiny_model_and_tokenizer()
    extra: dict[str, Any] = {"dataset_text_field": "text"} if fmt == "text" else {}
    trainer = SFTTrainer(
        model=model,
        args=sft_args(tmp_path / "out", max_length=512, **extra),
        train_dataset=splits["train"],
        processing_class=tok,
    )
    assert trainer.train_dataset[0]["input_ids"]
    assert trainer.train().global_step == 1


@pytest.mark.slow
def test_embedded_teacher_run_with_both_formats_and_conversations(tmp_path: Path) -> None:
    """The plumbing on the real 135M teacher: open-book and multi-turn settings through the whole flow."""
    from datapipe.cli import app
    from datapipe.store import RunStore

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    (docs / "garden.md").write_text(GARDEN, encoding="utf-8")
    cfg = write_config(
        tmp_path / "pipeline.yaml",
        run_id="formats",
        store=str(tmp_path / "runs"),
        sources=[str(docs)],
        chunk={"min_tokens": 16, "max_tokens": 96},
        generate={
            "questions_per_chunk": 2,
            "max_chunks": 4,
            "formats": {"instruction": ["closed_book", "open_book"]},
            "multi_turn": {"turns": 2, "share": 0.5},
            "question_params": {"max_new_tokens": 48, "seed": 0},
            "answer_params": {"max_new_tokens": 48, "seed": 0},
        },
    )
    result = CliRunner().invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "teacher tokens per kept sample" in " ".join(result.output.split())
    store = RunStore(tmp_path / "runs" / "formats")
    samples = list(store.iter_records("generate", Sample))
    rejects = [r for k in store.current_keys("generate") for r in store.read_shard_rejects("generate", k)]
    capped = {r.record_id for r in rejects if r.reason == "over_max_chunks"}
    sent = {c.id for c in store.iter_records("chunk", Chunk)} - capped
    accounted = {s.provenance.chunk_id for s in samples} | {
        json.loads(r.payload or "{}").get("chunk_id") for r in rejects
    }
    assert len(sent) == 4 and sent <= accounted  # every chunk sent to the teacher gave samples or rejects
    for s in samples:
        assert s.context_in_row == (s.training_format == "open_book")
        if s.context_in_row:
            assert s.provenance.context in s.messages[0].content and s.provenance.distractor_chunk_ids
        assert [m.role for m in s.messages] == ["user", "assistant"] * (len(s.messages) // 2)
    manifest = store.read_manifest("generate")
    assert manifest is not None and set(manifest["question_dedup"]) == {"dropped", "answer_tokens_saved"}
