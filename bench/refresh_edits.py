"""The edit series of bench_refresh.py: one sentence inserted, deleted or changed, and what the refresh re-sends.

Each document is written as a Markdown file (titles as ``#`` lines, one paragraph per extracted
element): the text documents of the shared corpus, the text extracted from its PDF, DOCX and HTML
files, and long documents made by joining all of them. Per document a baseline run goes through
the real stages in this process (extract, chunk, generate, filter, export, publish -> v0001). Then,
for each edit (insert / delete / change one sentence at the start, middle and end), the run folder
is put back as the baseline left it (run store and response cache, at the same path) and runs
again over the edited file, publishing v0002. Figures per edit:

- ``sent``: requests that reached the teacher server (cache misses);
- ``ideal``: the requests of the chunks whose text the edit touched (the new chunks holding the
  inserted or changed sentence, the old chunks that held the deleted one), each chunk costing
  1 question + ``questions_per_chunk`` answers;
- ``replaced``: samples of v0001 not in v0002 (version.json) and the chunks they came from.

The teacher is a stand-in OpenAI-compatible server in this script (a few lines on
``http.server``): it answers every question request with one question and every answer request
with a sentence naming the request, so every chunk costs exactly 2 requests and its samples pass
the (embedding-free) filters. What matters here is which requests are sent, not what a model
answers; the test tests/integration/test_refresh_edits.py counts the same at a real llama.cpp server.

To keep the series short on a shared machine, the embedding model's ``encode`` remembers each
sentence's embedding within this process (:func:`memoize_embeddings`), so a re-chunked document
embeds only its new sentences. The chunker decides exactly as it does in a run (an embedding
computed in another batch can differ in the last float bits; no decision here sits that close).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSERTED = "The review board confirmed these figures again at its meeting in March of last year."
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


class StubTeacher:
    """An OpenAI-compatible chat completions server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests += 1
                text = owner.reply(json.loads(body or b"{}"))
                out = json.dumps(
                    {
                        "id": "stub",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "stub",
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def reply(body: dict[str, Any]) -> str:
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        if "Do not answer them" in prompt:  # prompts/instruction_questions
            return f"1. Which rule does the passage {tag} describe, and who must follow it?"
        return f"The passage {tag} explains the rule it states, for the people it names, in the order it gives."

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def memoize_embeddings() -> None:
    """Make the default embedding model's ``encode`` compute each distinct sentence once per process."""
    import numpy as np

    from datapipe.chunk import load_embedder

    model = load_embedder(None)
    encode = model.encode
    memo: dict[tuple[str, bool], Any] = {}

    def remembered(texts: list[str], **kwargs: Any) -> Any:
        norm = bool(kwargs.get("normalize_embeddings"))
        todo = list(dict.fromkeys(t for t in texts if (t, norm) not in memo))
        if todo:
            memo.update(zip([(t, norm) for t in todo], encode(todo, **kwargs), strict=True))
        return np.stack([memo[(t, norm)] for t in texts]) if texts else encode(texts, **kwargs)

    model.encode = remembered


@dataclass
class Paragraph:
    text: str
    title: bool = False


def corpus_paragraphs(path: Path) -> list[Paragraph]:
    """A corpus file's extracted elements as paragraphs (titles kept as titles)."""
    from datapipe.config import ExtractConfig
    from datapipe.extract import SourceFile, extract_file
    from datapipe.records import Document

    doc = extract_file(SourceFile(path), ExtractConfig())
    assert isinstance(doc, Document), doc
    out = []
    for span in doc.spans:
        text = " ".join(doc.text[span.start : span.end].split())
        if text:
            out.append(Paragraph(text, span.category == "Title"))
    return out


def render(paragraphs: list[Paragraph]) -> str:
    return "\n\n".join(("# " + p.text) if p.title else p.text for p in paragraphs) + "\n"


def sentence_slots(paragraphs: list[Paragraph]) -> list[tuple[int, int]]:
    """(paragraph, sentence) of every sentence of a non-title paragraph, in order."""
    return [(i, j) for i, p in enumerate(paragraphs) if not p.title for j, _ in enumerate(_SENTENCE_END.split(p.text))]


def edit(paragraphs: list[Paragraph], op: str, where: str) -> tuple[list[Paragraph], str, int]:
    """The paragraphs with one sentence inserted after / deleted at / changed at the start, middle or end
    sentence; the sentence that marks the edit (inserted, deleted or changed text); and how often that text
    occurs before the edited place (in the version that holds it), to find the edited chunk, not a namesake."""
    slots = sentence_slots(paragraphs)
    pi, si = slots[{"start": 0, "middle": len(slots) // 2, "end": len(slots) - 1}[where]]
    sents = _SENTENCE_END.split(paragraphs[pi].text)
    before_here = " ".join(p.text for p in paragraphs[:pi])
    if op == "insert":
        sents.insert(si + 1, INSERTED)
        marker = INSERTED
        si += 1
    elif op == "delete":
        marker = sents.pop(si)
        if not sents:
            sents = [INSERTED]  # a one-sentence paragraph: keep the paragraph (the edit is still one sentence)
    else:
        s = sents[si]
        sents[si] = marker = (s[:-1] + ", as revised in 2024" + s[-1]) if s[-1:] in ".!?" else s + " (revised 2024)"
    out = list(paragraphs)
    out[pi] = Paragraph(" ".join(sents), False)
    prefix = " ".join([before_here, *(_SENTENCE_END.split(paragraphs[pi].text) if op == "delete" else sents)[:si]])
    return out, marker, " ".join(prefix.split()).count(marker)


def chunks_holding(texts: list[str], marker: str, occurrence: int) -> int:
    """How many of the document's chunks (in order) the ``occurrence``-th instance of ``marker`` lies in:
    1, or 2 where a chunk boundary cuts through it (an over-long sentence)."""
    seen = 0
    for t in texts:
        n = " ".join(t.split()).count(marker)
        if seen + n > occurrence:
            return 1
        seen += n
    return 2


def _config(path: Path, base_url: str) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "run_id": "edits",
                "store": "runs",
                "sources": ["docs"],
                "teacher": {"backend": "openai", "model": "stub", "base_url": base_url, "max_concurrency": 4},
                "generate": {"questions_per_chunk": 1},
                "filter": {
                    "languages": [],
                    "min_response_tokens": 0,
                    "grounding": {"enabled": False},
                    "near_dedup": {"enabled": False},
                    "semantic_dedup": {"enabled": False},
                },
            }
        ),
        encoding="utf-8",
    )
    return path


def run_once(folder: Path) -> dict[str, Any]:
    """The pipeline's stages in this process, as `datapipe run` runs them; the publish manifest."""
    from datapipe.config import load_config
    from datapipe.pipeline import run_chunk, run_export, run_extract, run_filter, run_generate
    from datapipe.versions import run_publish

    cfg = load_config(folder / "pipeline.yaml")
    run_extract(cfg)
    run_chunk(cfg)
    run_generate(cfg)
    run_filter(cfg)
    run_export(cfg)
    return run_publish(cfg, [cfg.export.format])


def chunk_texts(folder: Path) -> list[str]:
    from datapipe.records import Chunk
    from datapipe.store import RunStore

    store = RunStore(folder / "runs" / "edits")
    return [c.text for c in sorted(store.iter_records("chunk", Chunk), key=lambda c: c.index)]


def version(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / "runs" / "edits" / "versions" / name / "version.json").read_text())


def replaced_chunks(folder: Path) -> int:
    """Chunks of v0001 whose samples left in v0002."""
    import pyarrow.parquet as pq

    run = folder / "runs" / "edits"
    v1, v2 = version(folder, "v0001"), version(folder, "v0002")
    members = {
        v["version"]: pq.read_table(run / "versions" / f"{v['membership']}.parquet").to_pylist() for v in (v1, v2)
    }
    now = {m["id"] for m in members["v0002"]}
    return len({m["chunk_id"] for m in members["v0001"] if m["id"] not in now})


@dataclass
class EditResult:
    doc: str
    op: str
    where: str
    chunks: int
    sent: int
    ideal: int
    replaced: int
    replaced_chunks: int


def edit_series(name: str, paragraphs: list[Paragraph], work: Path, teacher: StubTeacher) -> list[EditResult]:
    """Baseline run of one document, then each of the nine edits from that baseline: the run folder is put back
    as the baseline left it before each edit, at the same path (a source's path is part of its chunks' ids)."""
    folder = work / name
    pristine = work / f"{name}.baseline"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / f"{name}.md").write_text(render(paragraphs), encoding="utf-8")
    _config(folder / "pipeline.yaml", teacher.base_url)
    run_once(folder)
    old_chunks = chunk_texts(folder)
    shutil.copytree(folder, pristine, symlinks=True)
    per_chunk = 2  # 1 question request + questions_per_chunk (1) answer requests
    results = []
    for op in ("insert", "delete", "change"):
        for where in ("start", "middle", "end"):
            shutil.rmtree(folder)
            shutil.copytree(pristine, folder, symlinks=True)
            edited, marker, occurrence = edit(paragraphs, op, where)
            (folder / "docs" / f"{name}.md").write_text(render(edited), encoding="utf-8")
            before = teacher.requests
            manifest = run_once(folder)
            sent = teacher.requests - before
            touched = old_chunks if op == "delete" else chunk_texts(folder)
            n_touched = chunks_holding(touched, marker, occurrence)
            samples = manifest.get("samples", {})
            results.append(
                EditResult(
                    name,
                    op,
                    where,
                    len(old_chunks),
                    sent,
                    per_chunk * n_touched,
                    int(samples.get("removed", 0)),
                    replaced_chunks(folder) if manifest.get("new_version") else 0,
                )
            )
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(pristine, ignore_errors=True)
    return results
