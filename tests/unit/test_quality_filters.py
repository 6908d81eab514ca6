"""Quality filters on real data: dedup strengths, decontamination against GSM8K, grounding, language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datapipe.chunk import load_embedder
from datapipe.config import (
    BenchmarkConfig,
    DecontaminationConfig,
    FilterConfig,
    GroundingConfig,
    NearDedupConfig,
    PipelineConfig,
    SemanticDedupConfig,
)
from datapipe.filter import filter_samples
from datapipe.filter.decontam import Decontaminator
from datapipe.filter.dedup import (
    near_duplicates,
    near_duplicates_partitioned,
    semantic_duplicates,
    semantic_duplicates_sliced,
)
from datapipe.filter.grounding import check_grounding
from datapipe.pipeline import NullProgress, apply_filters
from datapipe.records import Reject, Sample
from tests.records_kit import make_sample

NORWICH = (
    "Norwich City Football Club is an English professional football club based in Norwich, Norfolk. The club was "
    "founded in 1902 and has played its home games at Carrow Road since 1935. Norwich City is nicknamed the Canaries "
    "and plays in yellow and green. Its fierce rivalry with Ipswich Town is known as the East Anglian derby."
)


# the content checks (test_content_filters.py) off, so these samples reach decontamination and embedding grounding
PLUMBING: dict[str, object] = {
    "check_numbers": False,
    "check_entities": False,
    "max_unsupported_words": None,
    "self_contained": False,
}


def sample(i: int | str, q: str, a: str, context: str = NORWICH, kind: str = "instruction") -> Sample:
    return make_sample(f"s{i}", q, a, context, kind, source_path="norwich-city.txt")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> object:
    return load_embedder(None)


def test_near_duplicates_made_by_light_edits_are_caught(corpus_docs: Path) -> None:
    text = (corpus_docs / "norwich-city.txt").read_text(encoding="utf-8")
    words_all = text.split()
    paras = [" ".join(words_all[i : i + 60]) for i in range(0, 60 * 30, 60)]  # 30 distinct 60-word passages
    base = [sample(i, f"Summarise paragraph {i} of the club history.", p) for i, p in enumerate(paras)]
    edited = []
    for i, p in enumerate(paras[:10]):
        words = p.split()
        words[len(words) // 2] = "remarkably"  # one word changed, punctuation and case shuffled
        edited.append(sample(f"e{i}", f"summarise paragraph {i} of the club history", " ".join(words).upper()))
    dupes = near_duplicates(base + edited, NearDedupConfig())
    assert {k for k in dupes} == {f"se{i}" for i in range(10)}
    assert all(dupes[f"se{i}"][0] == f"s{i}" for i in range(10))


def test_partitioned_near_dedup_finds_exactly_what_the_single_process_one_finds(corpus_docs: Path) -> None:
    """Slices and band partitions (as Ray would run them) give the same clusters as one in-memory LSH,
    including chains: C near B near A, where B is dropped for A and C must be judged against kept ones only."""
    import random

    rng = random.Random(7)
    words_all = " ".join((corpus_docs / name).read_text(encoding="utf-8") for name in ("norwich-city.txt",)).split()
    samples = []
    for i in range(300):
        start = rng.randrange(0, len(words_all) - 50)
        words = words_all[start : start + 40]
        samples.append(sample(i, f"Passage {i}", " ".join(words)))
        for e in range(rng.choice([0, 0, 1, 3])):  # variants of this passage, each a few words further edited
            words = list(words)
            words[rng.randrange(len(words))] = rng.choice(["remarkably", "indeed", "club", "Norfolk"])
            samples.append(sample(f"{i}v{e}", f"Passage {i}", " ".join(words)))
    rng.shuffle(samples)
    cfg = NearDedupConfig()
    single = near_duplicates(samples, cfg)
    assert 50 < len(single) < len(samples) // 2
    for partitions, slice_size in ((1, 10_000), (3, 64), (8, 17)):
        assert near_duplicates_partitioned(samples, cfg, partitions=partitions, slice_size=slice_size) == single


def test_semantic_paraphrases_caught_distinct_questions_kept(model: object) -> None:
    samples = [
        sample(0, "When was Norwich City founded?", "Norwich City was founded in 1902."),
        sample(1, "Where does Norwich City play its home games?", "Norwich City plays at Carrow Road."),
        sample(2, "What is the nickname of Norwich City?", "The club is nicknamed the Canaries."),
        sample(3, "Who is Norwich City's main rival?", "Ipswich Town, in the East Anglian derby."),
        sample(4, "In what year was Norwich City FC founded?", "The club was founded in 1902."),
        sample(5, "What are Norwich City supporters and players called?", "They are known as the Canaries."),
    ]
    dupes = semantic_duplicates(samples, SemanticDedupConfig(), model)
    assert {k: v[0] for k, v in dupes.items()} == {"s4": "s0", "s5": "s2"}

    # embedded in slices, each a pickled task as Ray would run it (in another process: the embedder is loaded
    # there by name, not shipped): the same pairs, across slices too (s4 and s0 never share a slice of 2)
    import pickle

    jobs: list[int] = []

    def pickled(fn: Any, items: list[Any]) -> list[Any]:
        jobs.append(len(items))
        return [pickle.loads(pickle.dumps(fn))(pickle.loads(pickle.dumps(x))) for x in items]

    for size in (1, 2, 4):
        sliced = semantic_duplicates_sliced(samples, SemanticDedupConfig(slice_size=size), None, "torch", pickled)
        assert sliced.keys() == dupes.keys()
        assert all(sliced[k][0] == dupes[k][0] and abs(sliced[k][1] - dupes[k][1]) < 1e-4 for k in dupes)
    assert jobs == [6, 3, 2]


def _gsm8k(shared: Path) -> list[dict[str, str]]:
    lines = (shared / "benchmarks" / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:50]]


def test_gsm8k_contamination_verbatim_and_edited(shared: Path) -> None:
    cfg = DecontaminationConfig(
        benchmarks=[
            BenchmarkConfig(
                name="gsm8k", path=str(shared / "benchmarks" / "gsm8k" / "test.jsonl"), fields=["question", "answer"]
            )
        ]
    )
    decon = Decontaminator.build(cfg, Path("."))
    items = _gsm8k(shared)
    verbatim = sample("v", items[3]["question"], "The answer is 42.")
    words = items[7]["question"].split()
    words[2] = words[2].upper()
    words[-3] = "exactly"  # a light edit: case and one word near the end
    edited = sample("e", " ".join(words) + " Explain.", "Let me think step by step.")
    in_answer = sample("a", "Solve this.", items[11]["answer"])
    unrelated = [
        sample("u1", "A train travels 60 km per hour for 3 hours. How far does it travel in total?", "180 km."),
        sample("u2", "Tom has 12 apples and gives a third of them to Sara. How many apples does Tom keep?", "8."),
    ]
    for s in (verbatim, edited, in_answer):
        r = decon.check(s)
        assert r is not None and r.reason == "contaminated:gsm8k", s.id
    assert all(decon.check(s) is None for s in unrelated)


def test_grounding_rejects_unsupported_answers(model: object) -> None:
    grounded = sample(0, "When was the club founded?", "The club was founded in 1902.")
    paraphrased = sample(1, "What is the stadium called?", "They play their home matches at Carrow Road stadium.")
    unsupported = sample(2, "Who owns the club?", "The club belongs to a Japanese car maker since 1990.")
    skill = sample(3, "Write a haiku.", "Leaves fall, quiet pond.", context="")
    bad = check_grounding([grounded, paraphrased, unsupported, skill], GroundingConfig(), model)
    assert set(bad) == {"s2"}
    assert grounded.scores["grounding_lexical"] == 1.0 and "grounding_similarity" not in skill.scores


@pytest.mark.parametrize(
    ("q", "a", "reason"),
    [
        pytest.param(
            "Wann wurde Norwich City gegründet?",
            "Norwich City wurde im Jahr 1902 in Norwich gegründet.",
            "language_mismatch",
            id="german-sample-english-chunk",
        ),
        pytest.param(
            "Quand Norwich City a-t-il été fondé ?",
            "Norwich City a été fondé en 1902 à Norwich, en Angleterre.",
            "language_mismatch",
            id="french-sample-english-chunk",
        ),
        pytest.param(
            "When was the club founded in Norwich?",
            "When was the club founded in Norwich?",
            "copies_question",
            id="copies-question",
        ),
        pytest.param("Tell me everything about the club.", NORWICH, "copies_context", id="copies-chunk"),
    ],
)
def test_heuristics_language_and_copies(q: str, a: str, reason: str | None) -> None:
    [out] = list(filter_samples([sample(0, q, a)], FilterConfig()))
    if reason is None:
        assert isinstance(out, Sample)
    else:
        assert isinstance(out, Reject) and out.reason == reason


def test_token_bounds_use_the_tokenizer(model: object) -> None:
    from datapipe.chunk import count_tokens

    def counter(text: str) -> int:
        return count_tokens(model.tokenizer, [text])[0]  # type: ignore[attr-defined]

    long = sample(0, "Describe the club in detail please.", "Norwich City plays football. " * 60)
    [out] = list(filter_samples([long], FilterConfig(max_response_tokens=100, max_repeated_ngram_ratio=1.0), counter))
    assert isinstance(out, Reject) and out.reason == "too_long" and "tokens" in out.detail


def test_apply_filters_accounts_for_every_sample(shared: Path, tmp_path: Path) -> None:
    gsm = _gsm8k(shared)
    cfg = PipelineConfig(
        sources=["x"],
        base_dir=tmp_path,
        filter=FilterConfig(
            **PLUMBING,
            decontamination=DecontaminationConfig(
                benchmarks=[BenchmarkConfig(name="gsm8k", path=str(shared / "benchmarks" / "gsm8k" / "test.jsonl"))]
            ),
        ),
    )
    samples = [
        sample(0, "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
        sample(1, "In what year was Norwich City FC founded?", "The club was founded in 1902, in Norwich."),
        sample(2, "Where does Norwich City play its home games?", "Norwich City plays at Carrow Road since 1935."),
        sample(3, gsm[0]["question"], "They make 18 dollars every day at the market."),
        sample(4, "Who owns the club?", "A Japanese car maker bought it in 1990 for ten billion yen."),
        sample(5, "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
    ]
    kept, rejects, dropped = apply_filters(cfg, samples, NullProgress())
    assert len(kept) + len(rejects) == len(samples)
    reasons = {r.record_id: r.reason for r in rejects}
    assert reasons == {"s1": "duplicate_of:s0", "s3": "contaminated:gsm8k", "s4": "ungrounded", "s5": "duplicate_of:s0"}
    assert [s.id for s in kept] == ["s0", "s2"]
    assert sum(dropped.values()) == len(rejects)


def test_the_distributed_filter_gives_the_single_process_verdicts(shared: Path, tmp_path: Path) -> None:
    """The Ray runner's filter: per-sample steps in slices of 2 (each slice crossing a pickle boundary, as a
    Ray task's arguments and results do), exact dedup across slices in the driver: the same kept samples,
    rejects (in order, with details) and drop counts as in one process."""
    import pickle

    gsm = _gsm8k(shared)
    cfg = PipelineConfig(
        sources=["x"],
        base_dir=tmp_path,
        filter=FilterConfig(
            **PLUMBING,
            min_response_tokens=3,
            near_dedup=NearDedupConfig(partitions=2, slice_size=2),
            decontamination=DecontaminationConfig(
                benchmarks=[BenchmarkConfig(name="gsm8k", path=str(shared / "benchmarks" / "gsm8k" / "test.jsonl"))]
            ),
        ),
    )

    def samples() -> list[Sample]:
        return [
            sample(0, "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
            sample(1, "What is the club called?", "Yes."),
            sample(2, "Where does Norwich City play its home games?", "Norwich City plays at Carrow Road since 1935."),
            sample(3, gsm[0]["question"], "They make 18 dollars every day at the market."),
            sample(4, "Who owns the club?", "A Japanese car maker bought it in 1990 for ten billion yen."),
            sample(5, "When was Norwich City founded?", "Norwich City was founded in 1902, in Norwich."),
            sample(6, "What is the nickname of Norwich City?", "Norwich City is nicknamed the Canaries."),
            sample(7, "where does norwich city play its home games?", "Norwich City plays at Carrow Road since 1935."),
            sample(8, "In what colours does Norwich City play?", "The club plays in yellow and green."),
        ]

    calls: list[int] = []

    def as_tasks(fn: object, items: list[object]) -> list[object]:
        calls.append(len(items))
        return [pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(x))))) for x in items]  # type: ignore[operator]

    one = apply_filters(cfg, samples(), NullProgress())
    many = apply_filters(cfg, samples(), NullProgress(), map_fn=as_tasks)
    assert calls[:2] == [5, 3]  # heuristics over 9 samples in 5 slices, then decontamination/grounding over 6 kept
    assert [s.model_dump_json() for s in many[0]] == [s.model_dump_json() for s in one[0]]
    assert [(r.record_id, r.reason, r.detail) for r in many[1]] == [(r.record_id, r.reason, r.detail) for r in one[1]]
    assert many[2] == one[2]
    assert {"heuristics", "decontamination", "grounding"} <= set(one[2]) and one[0]  # every path taken, some kept

    # with no lower token bound the model is still loaded for grounding, and both paths then check the upper
    # bound with its tokenizer
    bounds = {"min_response_tokens": 0, "max_response_tokens": 12}
    cfg0 = cfg.model_copy(update={"filter": cfg.filter.model_copy(update=bounds)})
    one0 = apply_filters(cfg0, samples(), NullProgress())
    many0 = apply_filters(cfg0, samples(), NullProgress(), map_fn=as_tasks)
    assert any(r.reason == "too_long" for r in one0[1]) and one0[0]
    assert [s.model_dump_json() for s in many0[0]] == [s.model_dump_json() for s in one0[0]]
    assert [(r.record_id, r.reason) for r in many0[1]] == [(r.record_id, r.reason) for r in one0[1]]
