"""The stage runners, re-exported from :mod:`datapipe.stages` (one module per stage on one shard loop,
:mod:`datapipe.stages.runner`), and the filter chain (:mod:`datapipe.filter.chain`) the filter stage runs.
Plain Python, no Prefect: ``flows/`` wraps the stages as tasks.
"""

from __future__ import annotations

from datapipe.filter.chain import apply_filters
from datapipe.filter.chain import benchmark_digests as _benchmark_digests
from datapipe.filter.chain import build_judge as _build_judge
from datapipe.stages.chunk import run_chunk
from datapipe.stages.export import run_export
from datapipe.stages.extract import _record_extract, load_leaves, run_extract, taxonomy_sources
from datapipe.stages.filter import _filter_inputs, run_filter
from datapipe.stages.generate import (
    distilabel_jobs,
    instruction_generator,
    instruction_shard_key,
    pick_distractors,
    plan_instruction,
    plan_qa,
    question_dedup_record,
    run_generate,
    select_chunks,
)
from datapipe.stages.preference import run_preference
from datapipe.stages.runner import NullProgress, Part, Progress, in_part, local_map, write_output
from datapipe.stages.teachers import build_teacher, merge_stats, run_budget_key, teacher_cache_path, teacher_record
from datapipe.store import store_for

__all__ = [
    "_benchmark_digests",
    "_build_judge",
    "_filter_inputs",
    "apply_filters",
    "NullProgress",
    "Part",
    "Progress",
    "_record_extract",
    "build_teacher",
    "distilabel_jobs",
    "in_part",
    "instruction_generator",
    "instruction_shard_key",
    "local_map",
    "load_leaves",
    "merge_stats",
    "pick_distractors",
    "plan_instruction",
    "plan_qa",
    "question_dedup_record",
    "run_budget_key",
    "run_chunk",
    "run_export",
    "run_extract",
    "run_filter",
    "run_generate",
    "run_preference",
    "select_chunks",
    "store_for",
    "taxonomy_sources",
    "teacher_cache_path",
    "teacher_record",
    "write_output",
]
