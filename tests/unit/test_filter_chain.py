"""The filter chain with batch checks added the documented way: the toy plugin's ``max_per_source``
(tests/plugins/toy.py, a check across samples) and a per-sample batch check registered here, run by the real
chain in one process and through an executor whose tasks cross a pickle boundary (as Ray tasks do)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from datapipe.config import FilterConfig, NearDedupConfig, PipelineConfig
from datapipe.errors import ConfigError
from datapipe.filter import batch_check, build_filters, sample_reject
from datapipe.filter.chain import apply_filters
from datapipe.pipeline import NullProgress
from datapipe.records import Reject, Sample
from tests.records_kit import make_sample
from tests.unit.test_quality_filters import NORWICH, PLUMBING


@batch_check("no_exclamation", per_sample=True, order=250)
def no_exclamation(samples: list[Sample], ctx: Any) -> list[Reject]:
    """A per-sample batch check (between decontamination and grounding): answers with '!' go."""
    return [sample_reject(s, "exclaims", "the answer has '!'") for s in samples if "!" in s.response]


def samples() -> list[Sample]:
    rows = [
        ("a.txt", "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
        ("a.txt", "Where does Norwich City play its home games?", "Norwich City plays at Carrow Road since 1935!"),
        ("a.txt", "What is the nickname of Norwich City?", "Norwich City is nicknamed the Canaries."),
        ("a.txt", "In what colours does Norwich City play?", "The club plays in yellow and green."),
        ("b.txt", "Who are the rivals of Norwich City?", "Norwich City's rivals are Ipswich Town."),
        ("b.txt", "Where is Norwich City based?", "Norwich City is based in Norwich, Norfolk."),
        ("a.txt", "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
    ]
    return [make_sample(f"s{i}", q, a, NORWICH, source_path=src) for i, (src, q, a) in enumerate(rows)]


def as_tasks(fn: Any, items: list[Any]) -> list[Any]:
    as_tasks.calls.append(len(items))  # type: ignore[attr-defined]
    return [pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(x))))) for x in items]


def test_batch_checks_run_in_chain_order_with_the_same_verdicts_in_one_process_and_in_slices(tmp_path: Path) -> None:
    cfg = PipelineConfig(
        sources=["x"],
        base_dir=tmp_path,
        plugins=["tests.plugins.toy"],
        filter=FilterConfig(
            **PLUMBING,
            near_dedup=NearDedupConfig(slice_size=2),
            checks={"max_per_source": {"limit": 2}, "no_exclamation": {}},
        ),
    )
    as_tasks.calls = []  # type: ignore[attr-defined]
    one = apply_filters(cfg, samples(), NullProgress())
    many = apply_filters(cfg, samples(), NullProgress(), map_fn=as_tasks)
    # heuristics: 7 samples in 4 slices; then no_exclamation + grounding together, one task per slice of 2
    assert as_tasks.calls[:2] == [4, 3]  # type: ignore[attr-defined]
    kept, rejects, dropped = one
    assert [(r.record_id, r.reason) for r in rejects] == [
        ("s6", "duplicate_of:s0"),
        ("s1", "exclaims"),
        ("s3", "over_source_quota"),  # a.txt's third sample still standing after the others
    ]
    assert list(dropped) == [
        "heuristics",
        "no_exclamation",
        "grounding",
        "near_dedup",
        "semantic_dedup",
        "max_per_source",
    ]
    assert dropped["max_per_source"] == 1 and dropped["no_exclamation"] == 1
    assert [s.id for s in kept] == ["s0", "s2", "s4", "s5"]
    assert all(s.verdicts["max_per_source"] == "pass" and s.verdicts["no_exclamation"] == "pass" for s in kept)
    assert all(r.payload and Sample.model_validate_json(r.payload).id == r.record_id for r in rejects)
    assert [s.model_dump_json() for s in many[0]] == [s.model_dump_json() for s in kept]
    assert [r.model_dump_json() for r in many[1]] == [r.model_dump_json() for r in rejects]
    assert many[2] == dropped


def test_a_batch_check_is_off_unless_filter_checks_names_it_and_its_name_is_not_an_unknown_check(
    tmp_path: Path,
) -> None:
    cfg = PipelineConfig(
        sources=["x"], base_dir=tmp_path, plugins=["tests.plugins.toy"], filter=FilterConfig(**PLUMBING)
    )
    kept, rejects, dropped = apply_filters(cfg, samples(), NullProgress())
    assert "max_per_source" not in dropped and "no_exclamation" not in dropped
    assert [r.reason for r in rejects] == ["duplicate_of:s0"] and len(kept) == 6
    named = FilterConfig(checks={"max_per_source": {"limit": 1}, "max_digits": {"limit": 3}})
    assert [n for n, _ in build_filters(named)][-1] == "max_digits"  # per-sample checks only
    try:
        build_filters(FilterConfig(checks={"no_such": {}}))
    except ConfigError as exc:
        assert "no_such" in str(exc)
    else:
        raise AssertionError("an unknown check name must be a config error")
