"""Retryable failures are pending, not outcomes: the reasons catalogue, partial shards in the store, the
teacher's circuit breaker against a port where nothing listens (a real refused connection)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datapipe.config import GenerationParams, TeacherConfig
from datapipe.errors import PendingError, TeacherError, TeacherRefused, TeacherUnreachable, is_transient
from datapipe.pending import check_pending
from datapipe.pipeline import write_output
from datapipe.reasons import CATALOGUE, is_retryable, split_pending, teacher_failure
from datapipe.records import Reject, Sample
from datapipe.store import RunStore, StageRecorder
from datapipe.teacher import Teacher
from tests.conftest import free_port


def _reject(reason: str, rid: str) -> Reject:
    return Reject(stage="generate", record_id=rid, reason=reason, detail="d")


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [
        ("teacher_unavailable", True),
        ("teacher_error", False),
        ("parse_error", False),
        ("duplicate_of:abc", False),
        ("something_new", False),
    ],
    ids=lambda v: str(v),
)
def test_which_reasons_a_retry_can_fix(reason: str, retryable: bool) -> None:
    assert is_retryable(reason) is retryable


def test_catalogue_entries_say_stage_meaning_and_retryability() -> None:
    for code, entry in CATALOGUE.items():
        assert entry.code == code and entry.stages and entry.meaning


def test_split_pending_keeps_order_and_loses_nothing() -> None:
    rs = [_reject("parse_error", "a"), _reject("teacher_unavailable", "b"), _reject("teacher_error", "c")]
    final, pending = split_pending(rs)
    assert [r.record_id for r in final] == ["a", "c"] and [r.record_id for r in pending] == ["b"]


def test_teacher_failure_codes_and_a_refused_key_stops_the_stage() -> None:
    assert teacher_failure(TeacherError("x", transient=True, attempts=3)) == "teacher_unavailable"
    assert teacher_failure(TeacherUnreachable("x", transient=True, attempts=0)) == "teacher_unavailable"
    assert teacher_failure(TeacherError("HTTP 400", transient=False, attempts=1)) == "teacher_error"
    with pytest.raises(TeacherRefused):
        teacher_failure(TeacherRefused("HTTP 401", transient=False, attempts=1))


def test_a_shard_with_pending_records_is_partial_and_counted(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    rec = StageRecorder(store, "generate", "h")
    rejects = [_reject("parse_error", "a"), _reject("teacher_unavailable", "b"), _reject("teacher_unavailable", "c")]
    written, n_rej, n_pending = write_output(store, "generate", "k1", Sample.to_table([]), rejects)
    assert written.startswith("partial-") and (n_rej, n_pending) == (1, 2)
    assert not store.has_shard("generate", "k1"), "a partial shard must not look complete"
    rec.add(written, ["in"], 3, 0, n_rej, 0.1, False, n_pending)
    done, n_rej2, n_pending2 = write_output(store, "generate", "k2", Sample.to_table([]), rejects[:1])
    assert done == "k2" and store.has_shard("generate", "k2") and (n_rej2, n_pending2) == (1, 0)
    rec.add(done, ["in2"], 1, 0, 1, 0.1, False)
    m = rec.finish()
    assert m["counts"]["pending"] == 2 and m["counts"]["rejected"] == 2
    assert m["counts"]["in"] == m["counts"]["out"] + m["counts"]["rejected"] + m["counts"]["pending"]
    assert m["pending_by_reason"] == {"teacher_unavailable": 2}
    assert m["rejects_by_reason"] == {"parse_error": 2}
    assert sorted(r.record_id for r in store.iter_pending("generate")) == ["b", "c"]
    assert sorted(r.record_id for r in store.iter_rejects("generate")) == ["a", "a"]
    with pytest.raises(PendingError) as info:
        check_pending(m, allow_partial=False)
    assert is_transient(info.value) and info.value.pending == {"generate": 2}
    assert "run the same command again" in str(info.value)
    assert check_pending(m, allow_partial=True) is m


def test_pending_error_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(PendingError("generate: 2 records pending", {"generate": 2})))
    assert isinstance(err, PendingError) and str(err) == "generate: 2 records pending"


def test_circuit_breaker_stops_asking_an_unreachable_teacher() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: each connection is refused
    cfg = TeacherConfig(
        backend="openai",
        model="m",
        base_url=url,
        cache=False,
        max_concurrency=2,
        max_retries=10,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        unreachable_after=3,
    )
    teacher = Teacher(cfg)
    params = GenerationParams(max_new_tokens=4)

    async def go() -> list[BaseException | object]:
        async with teacher.session():
            msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(20)]
            return list(await asyncio.gather(*(teacher.complete(m, params) for m in msgs), return_exceptions=True))

    results = asyncio.run(go())
    assert all(isinstance(r, TeacherError) and r.transient for r in results)
    attempts = sum(n for k, n in teacher.stats.faults.items() if k.startswith("connection error"))
    # 20 requests with 10 retries each would be 220 attempts; the breaker stops after 3 in a row (+ in flight)
    assert 3 <= attempts <= 3 + cfg.max_concurrency, teacher.stats.faults
    assert url in (teacher.stats.unreachable or "") and teacher.stats.as_dict()["unreachable"]
    assert sum(isinstance(r, TeacherUnreachable) for r in results) >= 18


def test_breaker_off_when_unreachable_after_is_zero() -> None:
    cfg = TeacherConfig(
        backend="openai",
        model="m",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        cache=False,
        max_retries=4,
        backoff_base_s=0.0,
        backoff_max_s=0.0,
        unreachable_after=0,
    )
    teacher = Teacher(cfg)

    async def go() -> None:
        async with teacher.session():
            await teacher.complete([{"role": "user", "content": "q"}], GenerationParams(max_new_tokens=4))

    with pytest.raises(TeacherError) as info:
        asyncio.run(go())
    assert info.value.attempts == 5 and teacher.stats.unreachable is None
