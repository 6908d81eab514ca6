"""DPO preference pairs: candidates from the teacher, a rubric judge, pairs only above the margin."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.config import GenerationParams, PreferenceConfig, TeacherConfig
from datapipe.generate.preference import PreferenceGenerator, form_pair, parse_rating, parse_verdict
from datapipe.generate.prompts import load_prompt
from datapipe.records import Candidate, PreferencePair, Reject, Sample
from datapipe.store import RunStore
from datapipe.teacher import Teacher
from tests.conftest import (
    TINY_TEACHER_FILTER,
    LlamaServer,
    free_port,
    gguf_path,
    stop,
    wait_until_up,
    write_config,
)
from tests.integration.faultproxy import FaultProxy
from tests.records_kit import make_sample
from tests.trainer_kit import dpo_args, tiny_model_and_tokenizer

pytestmark = pytest.mark.integration
runner = CliRunner()
MARGIN = 1.0


@pytest.fixture(scope="module")
def pref_run(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """Instruction samples from the demo documents, then pairs, all on the embedded teacher."""
    repo = Path(__file__).resolve().parents[2]
    tmp = tmp_path_factory.mktemp("pref")
    cfg = write_config(
        tmp / "p.yaml",
        run_id="pref",
        store="runs",
        sources=[str(repo / "examples" / "docs")],
        generate={
            # pairs, not prompt quality: the 135M teacher follows v1's simpler question prompt more often
            "prompt_version": "v1",
            "questions_per_chunk": 1,
            "max_chunks": 15,  # every chunk: the 135M teacher's questions parse for about a third of them
            "question_params": {"max_new_tokens": 48, "temperature": 0.7, "seed": 1},
            "answer_params": {"max_new_tokens": 64, "temperature": 0.3, "seed": 1},
            "preference": {
                "enabled": True,
                "max_prompts": 4,
                "min_margin": MARGIN,
                "candidates": [{"max_new_tokens": 48, "temperature": 0.2}, {"max_new_tokens": 48, "temperature": 1.5}],
            },
        },
        # pairs are what this tests: keep the weak teacher's samples (the filters are tested on their own)
        filter={"grounding": {"enabled": False}, **TINY_TEACHER_FILTER},
    )
    result = runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return RunStore(tmp / "runs" / "pref")


@pytest.fixture(scope="module")
def pointwise_run(pref_run: RunStore, tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """The same run with ``pairwise: false`` (rubric scores and margin only), on a copy of ``pref_run`` with its
    teacher cache: the same candidates and ratings, without the pairwise check. The 135M judge is strongly
    position-biased (it tends to answer "A" whichever answer comes first), so the default run keeps few or no
    pairs; this one shows what the pairwise check removed and gives DPOTrainer rows to train on."""
    import shutil

    import yaml

    tmp = tmp_path_factory.mktemp("pointwise")
    src = Path(pref_run.root).parents[1]
    shutil.copytree(src / "runs", tmp / "runs", symlinks=True)
    data = yaml.safe_load((src / "p.yaml").read_text())
    data["store"] = str(tmp / "runs")
    data["generate"]["preference"]["pairwise"] = False
    cfg = write_config(tmp / "p.yaml", **data)
    result = runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return RunStore(tmp / "runs" / "pref")


def test_pairwise_check_judges_every_pair_the_margin_let_through(pref_run: RunStore, pointwise_run: RunStore) -> None:
    """Real run: each pair the rubric alone makes is, with the pairwise check, either kept (both orders agree) or
    a reject that keeps both verdicts."""
    plain = {p.sample_id: p for p in pointwise_run.iter_records("preference", PreferencePair)}
    assert plain, "the embedded teacher formed no preference pair"
    checked = {p.sample_id: p for p in pref_run.iter_records("preference", PreferencePair)}
    rejects = {r.record_id: r for r in pref_run.iter_rejects("preference")}
    assert pointwise_run.read_manifest("preference")["teacher"]["calls"] == 0  # every request answered by the cache
    for sid, p in plain.items():
        if sid in checked:
            assert checked[sid].chosen == p.chosen and checked[sid].rejected == p.rejected
            assert len(checked[sid].pairwise) == 2 and not p.pairwise
        else:
            r = rejects[sid]
            assert r.reason in {"position_inconsistent", "judges_disagree", "tie", "judge_parse_error"}
            verdicts = json.loads(r.payload)["pairwise"]
            assert len(verdicts) == 2 and all(v["raw"] for v in verdicts)
            assert [c["text"] for c in json.loads(r.payload)["candidates"]] == [c.text for c in p.candidates]


@pytest.mark.parametrize("run_name", ["pref_run", "pointwise_run"])
def test_pairs_respect_the_margin_and_keep_every_rating(run_name: str, request: pytest.FixtureRequest) -> None:
    run: RunStore = request.getfixturevalue(run_name)
    pairs = list(run.iter_records("preference", PreferencePair))
    for p in pairs:
        assert p.chosen_score - p.rejected_score >= MARGIN and p.margin == p.chosen_score - p.rejected_score
        assert len(p.candidates) == 3 and {c.source for c in p.candidates} == {"original", "teacher"}
        assert p.chosen[0].content in [c.text for c in p.candidates if c.score == p.chosen_score]
        assert p.rejected[0].content in [c.text for c in p.candidates if c.score == p.rejected_score]
        for c in p.candidates:
            assert c.judge_raw and (c.score is None or c.rationale)
            assert c.model == "SmolLM2-135M-Instruct.Q4_1.gguf" and json.loads(c.params)
        assert p.judge_model == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.judge_prompt.startswith("preference_judge@v1#")
        assert p.provenance.chunk_id and p.provenance.source_path
        # with the pairwise check, both orders were asked and agree on the chosen candidate
        best = next(i for i, c in enumerate(p.candidates) if c.text == p.chosen[0].content)
        if run_name == "pref_run":
            first, second = p.pairwise
            assert (first.first, second.second) == (best, best) and first.second == second.first
            assert {first.winner, second.winner} == {"first", "second"} and first.raw and second.raw
        assert p.length_diff == len(p.chosen[0].content) - len(p.rejected[0].content)
        assert all(c.prompt.startswith("preference_candidate@v1#") for c in p.candidates if c.source == "teacher")


@pytest.mark.parametrize("run_name", ["pref_run", "pointwise_run"])
def test_every_prompt_is_a_pair_or_a_reject(run_name: str, request: pytest.FixtureRequest) -> None:
    run: RunStore = request.getfixturevalue(run_name)
    kept = {s.id for s in run.iter_records("filter", Sample)}
    pairs = {p.sample_id for p in run.iter_records("preference", PreferencePair)}
    rejects = {r.record_id: r for r in run.iter_rejects("preference")}
    assert pairs | set(rejects) == kept and not pairs & set(rejects)
    assert all(
        r.reason
        in {
            "tie",
            "low_margin",
            "all_bad",
            "judge_parse_error",
            "teacher_error",
            "over_max_prompts",
            "position_inconsistent",
            "judges_disagree",
        }
        for r in rejects.values()
    )


def test_report_shows_the_preference_signal(pref_run: RunStore) -> None:
    """The summary and the HTML report of the embedded-teacher run: margins, position consistency, longer-wins."""
    from rich.console import Console

    from datapipe.report import collect_summary, render_summary
    from datapipe.report.html import build_report

    pairs = list(pref_run.iter_records("preference", PreferencePair))
    rejects = list(pref_run.iter_rejects("preference"))
    stats = collect_summary(pref_run)["preference"]
    assert stats["pairs"] == len(pairs) and sum(stats["margin_buckets"].values()) == len(pairs)
    n_inconsistent = sum(r.reason == "position_inconsistent" for r in rejects)
    assert stats["pairwise_checked"] - stats["position_consistent"] == n_inconsistent
    assert stats["position_consistent"] >= len(pairs)  # every kept pair's two verdicts agree
    assert stats["longer_won"] == sum(p.length_diff > 0 for p in pairs)
    assert stats["length_differs"] == sum(p.length_diff != 0 for p in pairs)
    console = Console(record=True, width=200)
    console.print(render_summary(collect_summary(pref_run)))
    text = console.export_text()
    assert f"preference pairs: {len(pairs)} judged" in text
    assert f"same verdict for A/B and B/A: {stats['position_consistent']} of {stats['pairwise_checked']}" in text
    assert f"longer answer chosen: {stats['longer_won']} of {stats['length_differs']}" in text
    html = build_report(pref_run)
    assert "Preference signal" in html and "position consistency (A/B = B/A)" in html
    assert f"{stats['position_consistent']}/{stats['pairwise_checked']}" in html


def test_dpo_export_loads_in_datasets_and_dpo_trainer(pointwise_run: RunStore, tmp_path: Path) -> None:
    import copy

    import datasets
    from trl import DPOTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    path = pointwise_run.root / "exports" / "dpo" / "train.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(ds) == len(list(pointwise_run.iter_records("preference", PreferencePair)))
    row = ds[0]
    assert is_conversational(row)
    model, tok = tiny_model_and_tokenizer()
    rendered = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert rendered["prompt"].startswith("<|im_start|>user") and rendered["chosen"] and rendered["rejected"]
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=dpo_args(tmp_path / "dpo", per_device_train_batch_size=1),
        train_dataset=ds.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tok,
    )
    assert trainer.train().global_step == 1


def _sample() -> Sample:
    return make_sample(
        "s1", "How do you get new ideas?", "By noticing anomalies.", "Notice anomalies.", source_path="ideas.html"
    )


@pytest.mark.parametrize(
    ("judge_replies", "reason"),
    [
        pytest.param(["3", "3", "3"], "tie", id="equal-scores"),
        pytest.param(["I cannot grade this."] * 3, "judge_parse_error", id="unparseable"),
        pytest.param(["Score: 2", "Score: 1", "Score: 2"], "all_bad", id="all-bad"),
    ],
)
def test_no_pair_without_a_clear_winner(llama_server: LlamaServer, judge_replies: list[str], reason: str) -> None:
    """Candidates come from the real llama.cpp server; the proxy injects the judge's replies."""
    script = ["ok", "ok"] + [f"content:{r}" for r in judge_replies]
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[
                GenerationParams(max_new_tokens=16, temperature=0.2),
                GenerationParams(max_new_tokens=16, temperature=1.2),
            ],
        )
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"))

        async def go() -> PreferencePair | Reject:
            async with teacher.session():
                return await gen.for_sample(_sample())

        out = asyncio.run(go())
    assert [f for _, f in proxy.arrivals][:2] == ["ok", "ok"]
    assert isinstance(out, Reject) and out.reason == reason and out.stage == "preference"
    raws = [c["judge_raw"] for c in json.loads(out.payload)["candidates"]]
    assert raws == judge_replies  # every rating, parsed or not, is kept with the reject


def test_form_pair_margin_rules() -> None:
    def cands(*scores: float | None) -> list[Candidate]:
        return [
            Candidate(text=f"t{i}", source="teacher", backend="b", model="m", params="{}", score=s)
            for i, s in enumerate(scores)
        ]

    assert form_pair(cands(5, 2, 4), 1.0, 3.0) == (0, 1)
    assert form_pair(cands(4, 3.5), 1.0, 3.0)[0] == "low_margin"
    assert form_pair(cands(None, 4), 1.0, 3.0)[0] == "judge_parse_error"
    assert form_pair(cands(4, None, 2), 2.0, 3.0) == (0, 2)
    assert form_pair(cands(3, 3, 3), 1.0, 3.0)[0] == "tie"
    assert form_pair(cands(2, 1), 1.0, 3.0)[0] == "all_bad"


@pytest.mark.parametrize(
    ("reply", "score"),
    [("The answer is 5.", 5.0), ("1. Not supported.", 1.0), ("Score: 4\nRationale: fine", 4.0), ("I'd say 2/5", 2.0)],
)
def test_parse_rating(reply: str, score: float) -> None:
    assert parse_rating(reply)[0] == score


@pytest.mark.parametrize("reply", ["Rating (1-5): Very helpful", "10 points", ""])
def test_parse_rating_refuses(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_rating(reply)


def test_second_model_candidates_are_recorded(llama_server: LlamaServer, tmp_path: Path) -> None:
    """A second model (here the same GGUF served by llama.cpp, standing for the student) adds a candidate."""
    teacher = Teacher(TeacherConfig(), tmp_path / "cache.sqlite")  # the embedded teacher writes and judges
    student_cfg = TeacherConfig(backend="openai", model="smollm2", base_url=llama_server.base_url)
    student = Teacher(student_cfg, tmp_path / "cache.sqlite")
    cfg = PreferenceConfig(
        enabled=True,
        candidates=[GenerationParams(max_new_tokens=24, temperature=0.2)],
        second_model=student_cfg,
        second_model_params=GenerationParams(max_new_tokens=24),
    )
    gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"), student)
    before = llama_server.chat_requests()

    async def go() -> PreferencePair | Reject:
        async with teacher.session(), student.session():
            return await gen.for_sample(_sample())

    out = asyncio.run(go())
    assert llama_server.chat_requests() == before + 1  # only the student's candidate went to the server
    cands = (
        out.candidates
        if isinstance(out, PreferencePair)
        else [Candidate(**c) for c in json.loads(out.payload)["candidates"]]
    )
    assert [c.source for c in cands] == ["original", "teacher", "student"]
    assert cands[2].backend == "openai" and cands[2].model == "smollm2"
    assert cands[1].backend == "llamacpp" and json.loads(cands[1].params)["temperature"] == 0.2
    assert all(c.judge_raw for c in cands)


def test_preference_in_parts_gives_the_same_pairs(pref_run: RunStore, tmp_path: Path) -> None:
    """The Ray runner's way: each part makes its share of the batches, then the full pass records them all.
    Run on a copy of the run (its teacher cache included, so the same requests get the same answers)."""
    import shutil

    import yaml

    from datapipe.pipeline import run_preference
    from datapipe.runs import load_target

    tmp = Path(pref_run.root).parents[1]
    shutil.copytree(tmp / "runs", tmp_path / "runs", symlinks=True)
    for stale in (tmp_path / "runs" / "pref" / "preferences", tmp_path / "runs" / "pref" / "rejects" / "preference"):
        shutil.rmtree(stale)
    data = yaml.safe_load((tmp / "p.yaml").read_text())
    data["store"] = str(tmp_path / "runs")
    cfg = load_target(str(write_config(tmp_path / "p.yaml", **data)))
    parts = [run_preference(cfg, part=(i, 2)) for i in range(2)]
    done = {k: v for p in parts for k, v in p["computed"].items()}
    assert done, "no part made a batch"
    manifest = run_preference(cfg, done_elsewhere=done, stats_elsewhere=parts)
    copy = RunStore(cfg.run_dir)
    assert sorted(p.model_dump_json() for p in copy.iter_records("preference", PreferencePair)) == sorted(
        p.model_dump_json() for p in pref_run.iter_records("preference", PreferencePair)
    )
    assert sorted((r.record_id, r.reason) for r in copy.iter_rejects("preference")) == sorted(
        (r.record_id, r.reason) for r in pref_run.iter_rejects("preference")
    )
    original = pref_run.read_manifest("preference")
    assert original is not None
    assert manifest["counts"] == {**original["counts"], "shards_reused": 0}
    assert manifest["teacher"]["requests"] == original["teacher"]["requests"] > 0  # the parts' requests, added up
    assert manifest["teacher"]["cache_hits"] == manifest["teacher"]["requests"]


# ------------------------------------------------------------------------ pairwise judging, both orders

CONTEXT = "The Tyne Bridge in Newcastle opened in 1928. Its main arch spans 161 metres."
DOCUMENT = CONTEXT + "\nThe Swing Bridge opened in 1876. The High Level Bridge opened in 1849."


def _bridge_sample() -> Sample:
    return make_sample(
        "tyne", "When did the Tyne Bridge open?", "The Tyne Bridge opened in 1928.", CONTEXT, source_path="bridges.md"
    )


def _scripted(
    llama_server: LlamaServer, script: list[str], *, hard_negatives: bool = False
) -> tuple[list[PreferencePair | Reject], FaultProxy, PreferenceGenerator]:
    """One sample through the generator: candidates from the real llama.cpp server (``ok``), the judge's
    replies injected by the proxy in the order the generator asks (pointwise per candidate, then A/B, B/A)."""
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script, record_bodies=True) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[
                GenerationParams(max_new_tokens=16, temperature=0.2),
                GenerationParams(max_new_tokens=16, temperature=1.2),
            ],
            hard_negatives=hard_negatives,
        )
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"), documents={"d": DOCUMENT})

        async def go() -> list[PreferencePair | Reject]:
            async with teacher.session():
                return await gen.pairs_for(_bridge_sample())

        out = asyncio.run(go())
    return out, proxy, gen


@pytest.mark.parametrize(
    ("verdicts", "detail"),
    [
        pytest.param(["A", "A"], "A/B: A, B/A: A", id="always-first"),
        pytest.param(["Answer B.", "B is better"], "A/B: B, B/A: B", id="always-second"),
        pytest.param(["A", "tie"], "A/B: A, B/A: tie", id="one-tie"),
    ],
)
def test_disagreeing_orders_are_rejected_position_inconsistent(
    llama_server: LlamaServer, verdicts: list[str], detail: str
) -> None:
    script = ["ok", "ok", "content:5", "content:4", "content:2"] + [f"content:{v}" for v in verdicts]
    [out], proxy, _ = _scripted(llama_server, script)
    assert len(proxy.arrivals) == 7  # 2 candidates, 3 ratings, 2 orders
    assert isinstance(out, Reject) and out.reason == "position_inconsistent" and detail in out.detail
    payload = json.loads(out.payload)
    assert [(v["first"], v["second"]) for v in payload["pairwise"]] == [(0, 2), (2, 0)]
    assert [v["raw"] for v in payload["pairwise"]] == verdicts  # both verdicts kept with the reject
    assert [c["score"] for c in payload["candidates"]] == [5.0, 4.0, 2.0]  # pointwise scores too


def test_agreeing_orders_make_the_pair_with_both_verdicts(llama_server: LlamaServer) -> None:
    script = ["ok", "ok", "content:5", "content:4", "content:2", "content:A", "content:B"]
    [out], proxy, _ = _scripted(llama_server, script)
    assert isinstance(out, PreferencePair)
    assert out.chosen[0].content == "The Tyne Bridge opened in 1928." and out.candidates[0].source == "original"
    assert out.rejected[0].content == out.candidates[2].text and out.margin == 3.0
    assert [(v.first, v.second, v.winner) for v in out.pairwise] == [(0, 2, "first"), (2, 0, "second")]
    assert out.length_diff == len(out.chosen[0].content) - len(out.rejected[0].content)
    # the candidates saw the chunk, as the sample's own answer did: the grounding template and the context
    for body in proxy.bodies[:2]:
        text = json.loads(body)["messages"][-1]["content"]
        assert CONTEXT in text and "When did the Tyne Bridge open?" in text
    assert {c.prompt.split("#")[0] for c in out.candidates[1:]} == {"preference_candidate@v1"}
    # the pairwise judge saw both answers in both orders
    a_b, b_a = (json.loads(b)["messages"][-1]["content"] for b in proxy.bodies[5:7])
    assert "Answer A: The Tyne Bridge opened in 1928." in a_b and "Answer B: The Tyne Bridge opened in 1928." in b_a


@pytest.mark.parametrize(
    ("ratings", "verdicts", "reason", "asked"),
    [
        # the orders agree, but the rubric's margin is too small: no pair, and the pairwise judge is not asked
        pytest.param(["Score: 4", "Score: 3.5", "Score: 4"], [], "low_margin", 5, id="agree-but-low-margin"),
        # both orders prefer the rubric's loser
        pytest.param(["5", "4", "2"], ["B", "A"], "judges_disagree", 7, id="both-prefer-the-loser"),
        pytest.param(["5", "4", "2"], ["tie", "Tie."], "tie", 7, id="tie-both-orders"),
        pytest.param(["5", "4", "2"], ["A", "I cannot decide."], "judge_parse_error", 7, id="no-verdict"),
    ],
)
def test_agreeing_orders_keep_the_margin_rule(
    llama_server: LlamaServer, ratings: list[str], verdicts: list[str], reason: str, asked: int
) -> None:
    script = ["ok", "ok"] + [f"content:{r}" for r in ratings + verdicts]
    [out], proxy, _ = _scripted(llama_server, script)
    assert len(proxy.arrivals) == asked
    assert isinstance(out, Reject) and out.reason == reason, out


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("A", "A"), ("B.", "B"), ("Answer B is better.", "B"), ("A is more accurate", "A"), ("**B**", "B")]
    + [("Tie", "tie"), ("Both are equally good", "tie"), ("Better: A", "A"), ("I think answer B is better", "B")],
)
def test_parse_verdict(reply: str, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["A good answer would mention the year.", "", "I cannot decide."])
def test_parse_verdict_refuses(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_verdict(reply)


# ------------------------------------------------------------------------ the student's candidates


@pytest.fixture(scope="module")
def student_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A second real `python -m llama_cpp.server` (the same GGUF, served as "student"): the model being trained."""
    port = free_port()
    log = tmp_path_factory.mktemp("student") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", "student"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/v1/models", log, "llama_cpp.server (student)")
        yield LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", log_path=log, model="student")
    finally:
        stop(proc, 10)


def test_student_endpoint_gives_grounded_candidates(llama_server: LlamaServer, student_server: LlamaServer) -> None:
    """Teacher and judge: llama.cpp behind the scripted proxy; the student: a second llama.cpp server, reached
    through a recording proxy that forwards every request unchanged."""
    script = ["ok", "content:5", "content:4", "content:2", "content:A", "content:B"]
    up = student_server.base_url.removesuffix("/v1")
    with (
        FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy,
        FaultProxy(up, free_port(), [], record_bodies=True) as student_proxy,
    ):
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        student_cfg = TeacherConfig(backend="openai", model="student", base_url=student_proxy.base_url, cache=False)
        student = Teacher(student_cfg)
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[GenerationParams(max_new_tokens=16, temperature=0.2)],
            second_model=student_cfg,
            second_model_params=GenerationParams(max_new_tokens=24, temperature=0.7),
        )
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"), student)
        before = student_server.chat_requests()

        async def go() -> PreferencePair | Reject:
            async with teacher.session(), student.session():
                return await gen.for_sample(_bridge_sample())

        out = asyncio.run(go())
    assert student_server.chat_requests() == before + 1  # the student answered once, for real
    assert len(proxy.arrivals) == 6  # teacher: 1 candidate, 3 ratings, 2 orders; no judging on the student
    assert isinstance(out, PreferencePair), out
    student_cand = out.candidates[2]
    assert student_cand.source == "student" and student_cand.model == "student" and student_cand.backend == "openai"
    assert out.rejected[0].content == student_cand.text  # the on-policy answer is the rejected one
    assert json.loads(student_cand.params)["temperature"] == 0.7
    assert CONTEXT in json.loads(student_proxy.bodies[0])["messages"][-1]["content"]  # same grounding as the rest


# ------------------------------------------------------------------------ hard negatives


def test_hard_negative_changes_one_fact_and_the_filters_catch_it(llama_server: LlamaServer) -> None:
    from datapipe.config import FilterConfig
    from datapipe.filter import filter_samples

    script = ["ok", "ok", "content:5", "content:4", "content:2", "content:A", "content:B"]
    out, _, gen = _scripted(llama_server, script, hard_negatives=True)
    assert len(out) == 2 and all(isinstance(p, PreferencePair) for p in out)
    pair, neg = out
    assert isinstance(pair, PreferencePair) and isinstance(neg, PreferencePair)
    assert neg.chosen == pair.chosen and neg.sample_id == pair.sample_id and neg.id != pair.id
    info = json.loads(neg.candidates[1].params)
    assert neg.candidates[1].source == "hard_negative" and neg.candidates[1].backend == "synthetic"
    assert info["replaced"] == "number" and info["old"] == "1928" and info["new"] in {"1876", "1849"}
    assert info["caught_by"] == ["unsupported_number"]
    assert neg.rejected[0].content == f"The Tyne Bridge opened in {info['new']}."
    assert gen.hard_negative_counts == {"made": 1}
    # the self-check, once more through the filter stage's public entry: the negative is rejected, the chosen kept
    sample = _bridge_sample()
    as_neg = sample.model_copy(
        update={"id": "neg", "response": neg.rejected[0].content, "messages": [*sample.messages[:1], neg.rejected[0]]}
    )
    verdicts = list(filter_samples([sample, as_neg], FilterConfig(min_response_chars=5)))
    assert isinstance(verdicts[0], Sample)
    assert isinstance(verdicts[1], Reject) and verdicts[1].reason == "unsupported_number"


def test_hard_negative_swaps_a_name_when_there_is_no_number(llama_server: LlamaServer) -> None:
    context = "Ralph Freeman designed the arch of the Tyne Bridge."
    sample = make_sample("arch", "Who designed the arch of the Tyne Bridge?", "Ralph Freeman designed it.", context)
    script = ["ok", "ok", "content:5", "content:4", "content:2", "content:A", "content:B"]
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[GenerationParams(max_new_tokens=16), GenerationParams(max_new_tokens=16, temperature=1.2)],
            hard_negatives=True,
        )
        documents = {"d": context + " The Swing Bridge was designed by William Armstrong."}
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"), documents=documents)

        async def go() -> list[PreferencePair | Reject]:
            async with teacher.session():
                return await gen.pairs_for(sample)

        out = asyncio.run(go())
    assert len(out) == 2 and isinstance(out[1], PreferencePair)
    info = json.loads(out[1].candidates[1].params)
    assert (info["old"], info["new"], info["caught_by"]) == (
        "Ralph Freeman",
        "William Armstrong",
        ["unsupported_entity"],
    )
    assert out[1].rejected[0].content == "William Armstrong designed it."


def test_no_hard_negative_without_another_fact_in_the_document(llama_server: LlamaServer) -> None:
    script = ["ok", "ok", "content:5", "content:4", "content:2", "content:A", "content:B"]
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[GenerationParams(max_new_tokens=16), GenerationParams(max_new_tokens=16, temperature=1.2)],
            hard_negatives=True,
        )
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"), documents={"d": CONTEXT})

        async def go() -> list[PreferencePair | Reject]:
            async with teacher.session():
                return await gen.pairs_for(_bridge_sample())

        out = asyncio.run(go())
    assert len(out) == 1 and isinstance(out[0], PreferencePair)
    assert gen.hard_negative_counts == {"no_fact_to_replace": 1}


# ------------------------------------------------------------------------ length bias rule


@pytest.mark.parametrize(
    ("long", "short", "reason"),
    [
        # much longer, and it adds numbers and a name the source does not have: rejected
        pytest.param(
            "It opened in 1928 after Ralph Freeman's 1925 plan and the 1930 works, a long story.",
            "In 1928.",
            "longer_not_better",
            id="longer-and-less-grounded",
        ),
        # much longer but better grounded than the short answer (which gets the year wrong): kept
        pytest.param(
            "The Tyne Bridge in Newcastle opened in 1928, and its main arch spans 161 metres.",
            "In 1931.",
            None,
            id="longer-and-better-grounded",
        ),
    ],
)
def test_length_rule(llama_server: LlamaServer, long: str, short: str, reason: str | None) -> None:
    script = [f"content:{long}", f"content:{short}", "content:3", "content:5", "content:1", "content:A", "content:B"]
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), script) as proxy:
        teacher = Teacher(
            TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False, max_concurrency=1)
        )
        cfg = PreferenceConfig(
            enabled=True,
            candidates=[GenerationParams(max_new_tokens=16), GenerationParams(max_new_tokens=16, temperature=1.2)],
            max_length_ratio=2.0,
        )
        gen = PreferenceGenerator(cfg, teacher, load_prompt("preference_judge"))

        async def go() -> PreferencePair | Reject:
            async with teacher.session():
                return await gen.for_sample(_bridge_sample())

        out = asyncio.run(go())
    if reason is None:
        assert isinstance(out, PreferencePair) and out.chosen[0].content == long and out.rejected[0].content == short
        assert out.length_diff == len(long) - len(short) > 0
    else:
        assert isinstance(out, Reject) and out.reason == reason and "max_length_ratio=2" in out.detail
        assert len(json.loads(out.payload)["pairwise"]) == 2
