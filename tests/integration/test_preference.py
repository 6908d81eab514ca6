"""DPO preference pairs: candidates from the teacher, a rubric judge, pairs only above the margin."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.config import GenerationParams, PreferenceConfig, TeacherConfig
from datapipe.generate.preference import PreferenceGenerator, form_pair, parse_rating
from datapipe.generate.prompts import load_prompt
from datapipe.records import Candidate, PreferencePair, Reject, Sample
from datapipe.store import RunStore
from datapipe.teacher import Teacher
from tests.conftest import TINY_TEACHER_FILTER, LlamaServer, free_port, write_config
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


def test_pairs_respect_the_margin_and_keep_every_rating(pref_run: RunStore) -> None:
    pairs = list(pref_run.iter_records("preference", PreferencePair))
    assert pairs, "the embedded teacher formed no preference pair"
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


def test_every_prompt_is_a_pair_or_a_reject(pref_run: RunStore) -> None:
    kept = {s.id for s in pref_run.iter_records("filter", Sample)}
    pairs = {p.sample_id for p in pref_run.iter_records("preference", PreferencePair)}
    rejects = {r.record_id: r for r in pref_run.iter_rejects("preference")}
    assert pairs | set(rejects) == kept and not pairs & set(rejects)
    assert all(
        r.reason in {"tie", "low_margin", "all_bad", "judge_parse_error", "teacher_error", "over_max_prompts"}
        for r in rejects.values()
    )


def test_dpo_export_loads_in_datasets_and_dpo_trainer(pref_run: RunStore, tmp_path: Path) -> None:
    import copy

    import datasets
    from trl import DPOTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    path = pref_run.root / "exports" / "dpo" / "train.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(ds) == len(list(pref_run.iter_records("preference", PreferencePair)))
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
    assert [c.source for c in cands] == ["original", "teacher", "second_model"]
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
