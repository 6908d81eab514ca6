"""Human curation against a real Argilla 2.8.0 server on 127.0.0.1.

What is real: argilla-server's FastAPI app and HTTP API, its SQLite database (migrated with its own CLI),
Redis (Debian's redis-server), the `argilla` SDK inside datapipe, and the web UI served by argilla-server,
driven by headless Chromium (Debian's package) through Playwright. The stand-in: OpenSearch cannot be
installed here, so the search back end is osmem-server, an in-memory OpenSearch emulator from PyPI, used
through argilla's own OpenSearch engine; its painless-script updates are replaced by read-modify-write in
scripts/argilla/app.py. Reviews are submitted the way the UI submits them: POST /api/v1/records/{id}/responses
with a reviewer's own login token.

The run's samples are written straight into a run store (the teacher plays no part in curation).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.curate import curated_samples, load_decisions
from datapipe.filter.scores import FAITHFULNESS, QUALITY
from datapipe.records import Message, Sample
from datapipe.store import RunStore
from tests.conftest import REPO, free_port
from tests.unit.test_export import make_pair, make_run, make_sample

pytestmark = pytest.mark.integration
runner = CliRunner()
ARTIFACTS = Path(os.environ.get("DATAPIPE_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _stack_module() -> Any:
    spec = importlib.util.spec_from_file_location("argilla_stack", REPO / "scripts" / "argilla" / "stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def argilla() -> Iterator[Any]:
    stack_mod = _stack_module()
    workdir = Path(tempfile.mkdtemp(prefix="datapipe-argilla-"))
    stack = stack_mod.ArgillaStack(workdir)
    try:
        stack.start()
    except RuntimeError as exc:
        pytest.fail(f"the Argilla stack did not start (run `bash scripts/setup.sh`): {exc}")
    yield stack
    stack.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _samples() -> list[Sample]:
    """50 kept samples: 35 instruction, 15 taxonomy QA with judge scores."""
    out = []
    for i in range(50):
        s = make_sample(i)
        if i >= 35:
            p = s.provenance.model_copy(update={"taxonomy_path": "knowledge/handbook/leave", "leaf_kind": "knowledge"})
            s = s.model_copy(
                update={"kind": "qa", "provenance": p, "scores": {FAITHFULNESS: 4.0, QUALITY: float(1 + i % 5)}}
            )
        s.verdicts.update({"heuristics": "pass", "dedup_exact": "pass"})
        out.append(s)
    return out


@pytest.fixture(scope="module")
def run(argilla: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("curate")
    run_dir = make_run(tmp, _samples(), pairs=[make_pair(i) for i in range(6)])
    _set_curate(run_dir, api_url=argilla.url, workspace="review")
    return run_dir


def _set_curate(run_dir: Path, **curate: Any) -> None:
    import json

    path = run_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg["curate"] = {**cfg.get("curate", {}), **curate}
    path.write_text(json.dumps(cfg))


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch, argilla: Any) -> None:
    monkeypatch.setenv("ARGILLA_API_KEY", argilla.api_key)


def _owner(argilla: Any) -> httpx.Client:
    return httpx.Client(base_url=argilla.url, headers={"X-Argilla-Api-Key": argilla.api_key}, timeout=30)


def _records(argilla: Any, dataset: str) -> list[dict[str, Any]]:
    with _owner(argilla) as c:
        ds = next(d for d in c.get("/api/v1/me/datasets").json()["items"] if d["name"] == dataset)
        body = c.get(f"/api/v1/datasets/{ds['id']}/records", params={"limit": 1000, "include": ["suggestions"]})
        body.raise_for_status()
        return body.json()["items"]


def _reviewer(argilla: Any, username: str) -> httpx.Client:
    """A reviewer (annotator in the workspace) logged in with username and password, as in the UI."""
    with _owner(argilla) as c:
        ws = next(w for w in c.get("/api/v1/me/workspaces").json()["items"] if w["name"] == "review")
        password = f"{username}-password"
        user = c.post(
            "/api/v1/users",
            json={"first_name": username, "username": username, "password": password, "role": "annotator"},
        )
        if user.status_code == 201:
            c.post(f"/api/v1/workspaces/{ws['id']}/users", json={"user_id": user.json()["id"]}).raise_for_status()
    token = httpx.post(f"{argilla.url}/api/v1/token", data={"username": username, "password": password})
    token.raise_for_status()
    return httpx.Client(
        base_url=argilla.url, headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=30
    )


def _review(client: httpx.Client, record_id: str, status: str = "submitted", **values: Any) -> None:
    # Argilla 2.8.0 answers HTTP 500 to a discarded response without values, so every review sends values.
    body = {"values": {k: {"value": v} for k, v in values.items()}, "status": status}
    resp = client.post(f"/api/v1/records/{record_id}/responses", json=body)
    assert resp.status_code == 201, resp.text


def _cli(*args: str) -> Any:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def test_push_creates_one_dataset_per_kind_and_pushing_again_adds_nothing(run: Path, argilla: Any) -> None:
    first = _cli("curate", "push", str(run))
    assert first.exit_code == 0, first.output
    facts = RunStore(run).read_json("curate", "push.json")
    fresh = {"updated": 0, "removed_stale": 0, "removed_stale_reviewed": 0}
    assert facts["datasets"] == {
        "exp-instruction": {"records": 35, "new": 35, **fresh, "on_server": 35},
        "exp-qa": {"records": 15, "new": 15, **fresh, "on_server": 15},
        "exp-preference": {"records": 6, "new": 6, **fresh, "on_server": 6},
    }
    records = {r["external_id"]: r for r in _records(argilla, "exp-qa")}
    assert set(records) == {f"sample-{i:05d}" for i in range(35, 50)}
    rec = records["sample-00037"]
    assert rec["metadata"]["taxonomy_path"] == "knowledge/handbook/leave"
    assert rec["metadata"]["score_judge_quality"] == 3.0 and rec["metadata"]["source"] == "/docs/handbook-1.pdf"
    suggestions = {s["question_id"]: s for s in rec["suggestions"]}
    values = sorted(str(s["value"]) for s in suggestions.values())
    assert "keep" in values and "4" in values  # keep, and quality round(mean(faithfulness 4, quality 3))
    sample = next(s for s in _samples() if s.id == "sample-00037")
    assert sample.response in values  # the correction question is prefilled with the response

    second = _cli("curate", "push", str(run))
    assert second.exit_code == 0, second.output
    again = RunStore(run).read_json("curate", "push.json")["datasets"]
    assert {k: (v["new"], v["updated"], v["on_server"]) for k, v in again.items()} == {
        "exp-instruction": (0, 35, 35),
        "exp-qa": (0, 15, 15),
        "exp-preference": (0, 6, 6),
    }
    assert len(_records(argilla, "exp-instruction")) == 35


def test_a_changed_sample_is_updated_in_place(run: Path, argilla: Any) -> None:
    store = RunStore(run)
    key = store.current_keys("filter")[0]
    samples = store.read_shard("filter", key, Sample)
    changed = [
        s.model_copy(update={"scores": {**s.scores, QUALITY: 5.0}}) if s.id == "sample-00040" else s for s in samples
    ]
    store.write_shard("filter", key, Sample.to_table(changed), store.read_shard_rejects("filter", key))
    try:
        assert _cli("curate", "push", str(run)).exit_code == 0
        records = {r["external_id"]: r for r in _records(argilla, "exp-qa")}
        assert len(records) == 15
        assert records["sample-00040"]["metadata"]["score_judge_quality"] == 5.0
    finally:
        store.write_shard("filter", key, Sample.to_table(samples), store.read_shard_rejects("filter", key))


def _ids(argilla: Any, dataset: str) -> dict[str, str]:
    return {r["external_id"]: r["id"] for r in _records(argilla, dataset)}


def test_pull_applies_accept_discard_and_corrections(run: Path, argilla: Any) -> None:
    assert _cli("curate", "push", str(run)).exit_code == 0
    ins, pref = _ids(argilla, "exp-instruction"), _ids(argilla, "exp-preference")
    rev1, rev2 = _reviewer(argilla, "rev1"), _reviewer(argilla, "rev2")
    fix2 = "Corrected: twenty days of leave apply, per clause 2."
    fix6 = "Corrected by both: clause 6 grants ten days."
    fix_pair = "Corrected chosen: twenty days apply in case 0, by clause 4."
    with rev1, rev2:
        _review(rev1, ins["sample-00000"], keep="keep", quality=5)
        _review(rev1, ins["sample-00001"], keep="discard")
        _review(rev1, ins["sample-00002"], keep="keep", correction=fix2)
        _review(rev1, ins["sample-00003"], status="draft", keep="keep")  # a draft: not applied
        _review(rev1, ins["sample-00004"], status="discarded", keep="keep")  # Argilla's Discard button
        _review(rev1, ins["sample-00005"], keep="keep")
        _review(rev2, ins["sample-00005"], keep="discard")  # split: any_discard drops, majority ties
        _review(rev1, ins["sample-00006"], keep="keep", correction=fix6)
        _review(rev2, ins["sample-00006"], keep="keep", correction=fix6, quality=4)
        _review(rev1, pref["pair-00000"], keep="keep", correction=fix_pair)
        _review(rev1, pref["pair-00001"], keep="discard")

    # Pushing again keeps the reviews (records are updated, not replaced).
    assert _cli("curate", "push", str(run)).exit_code == 0
    pulled = _cli("curate", "pull", str(run))
    assert pulled.exit_code == 0, pulled.output
    store = RunStore(run)
    decisions, pairs, _ = load_decisions(store)
    state = {k: d.decision for k, d in decisions.items() if d.decision != "pending"}
    assert state == {
        "sample-00000": "accepted",
        "sample-00001": "discarded",
        "sample-00002": "corrected",
        "sample-00004": "discarded",
        "sample-00005": "discarded",
        "sample-00006": "corrected",
        "pair-00000": "corrected",
        "pair-00001": "discarded",
    }
    assert decisions["sample-00003"].decision == "pending" and decisions["sample-00003"].drafts == 1
    assert decisions["sample-00006"].reviewers == ["rev1", "rev2"] and decisions["sample-00006"].quality == 4.0

    curated = {s.id: s for s in curated_samples(store)}
    assert set(curated) == {"sample-00000", "sample-00002", "sample-00006"}
    original2 = make_sample(2).response
    assert curated["sample-00002"].response == fix2 and curated["sample-00002"].messages[-1].content == fix2
    cur = curated["sample-00002"].provenance.curation
    assert cur is not None and cur.original_response == original2 and cur.reviewers == ["rev1"]
    assert curated["sample-00000"].provenance.curation.decision == "accepted"  # type: ignore[union-attr]

    rejects = {r.record_id: r for r in store.iter_rejects("curate")}
    assert set(rejects) == {"sample-00001", "sample-00004", "sample-00005", "pair-00001"}
    assert {r.reason for r in rejects.values()} == {"discarded_by_reviewer"}
    assert "rev2" in rejects["sample-00005"].detail and Sample.model_validate_json(rejects["sample-00001"].payload)

    by_sample = {p.sample_id: p for p in pairs}
    assert set(by_sample) == {"sample-00002", "sample-00006"}
    assert by_sample["sample-00002"].chosen == [Message(role="assistant", content=fix2)]
    assert by_sample["sample-00002"].rejected == [Message(role="assistant", content=original2)]
    assert by_sample["sample-00002"].prompt[-1].role == "user"

    # Exports: curated only, everything reviewers did not drop, and DPO with the reviewers' pairs.
    only = _cli("export", str(run), "--format", "chatml", "--curated-only", "--out", str(run / "out-curated"))
    assert only.exit_code == 0, only.output
    rows = pq.read_table(run / "out-curated" / "train.parquet").to_pylist()
    assert sorted(r["id"] for r in rows) == ["sample-00000", "sample-00002", "sample-00006"]
    assert next(r for r in rows if r["id"] == "sample-00002")["messages"][-1]["content"] == fix2
    not_curated = [r for r in store.iter_rejects("export") if r.reason == "not_curated"]
    assert len(not_curated) == 50 - 3 - 3  # 3 curated, 3 discarded (curate rejects), the rest unreviewed

    everything = _cli("export", str(run), "--format", "chatml", "--all", "--out", str(run / "out-all"))
    assert everything.exit_code == 0, everything.output
    rows = pq.read_table(run / "out-all" / "train.parquet").to_pylist()
    assert len(rows) == 47 and {"sample-00001", "sample-00004", "sample-00005"}.isdisjoint(r["id"] for r in rows)

    dpo = _cli("export", str(run), "--format", "dpo", "--all", "--out", str(run / "out-dpo"))
    assert dpo.exit_code == 0, dpo.output
    rows = pq.read_table(run / "out-dpo" / "train.parquet").to_pylist()
    assert len(rows) == 6 - 1 + 2
    chosen = {r["id"]: r["chosen"][-1]["content"] for r in rows}
    assert chosen["pair-00000"] == fix_pair
    assert fix2 in chosen.values() and fix6 in chosen.values()

    # The majority policy reads the 1-1 split on sample 5 as a conflict and leaves it pending.
    _set_curate(run, policy="majority")
    try:
        assert _cli("curate", "pull", str(run)).exit_code == 0
        decisions, _, _ = load_decisions(store)
        assert decisions["sample-00005"].decision == "conflict"
        assert "sample-00005" not in {r.record_id for r in store.iter_rejects("curate")}
    finally:
        _set_curate(run, policy="any_discard")


def test_argilla_unreachable_or_wrong_key_fails_clearly_and_changes_nothing(
    run: Path, argilla: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(run)
    before = store.read_manifest("curate")
    dead = f"http://127.0.0.1:{free_port()}"
    _set_curate(run, api_url=dead)
    try:
        for cmd in ("pull", "push"):
            out = _cli("curate", cmd, str(run))
            assert out.exit_code == 2
            assert f"cannot reach Argilla at {dead}" in out.output and "nothing was changed locally" in out.output
    finally:
        _set_curate(run, api_url=argilla.url)
    secret = "argilla.wrong-key-0123456789"
    monkeypatch.setenv("ARGILLA_API_KEY", secret)
    out = _cli("curate", "pull", str(run))
    assert out.exit_code == 2
    assert "refused the API key in ARGILLA_API_KEY" in out.output and secret not in out.output
    monkeypatch.delenv("ARGILLA_API_KEY")
    out = _cli("curate", "push", str(run))
    assert out.exit_code == 2 and "set the environment variable ARGILLA_API_KEY" in out.output
    assert store.read_manifest("curate") == before


def test_the_argilla_ui_shows_the_pushed_dataset(run: Path, argilla: Any) -> None:
    """Headless Chromium (Debian's) logs in to the UI argilla-server serves and opens the dataset."""
    from playwright.sync_api import sync_playwright

    assert _cli("curate", "push", str(run)).exit_code == 0
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run `bash scripts/setup.sh` as root, or apt-get install chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "argilla-ui-dataset.png"
    with _owner(argilla) as c:
        ds = next(d for d in c.get("/api/v1/me/datasets").json()["items"] if d["name"] == "exp-qa")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{argilla.url}/sign-in", wait_until="networkidle")
        page.fill("input[name=username], input#username, input[type=text]", argilla.username)
        page.fill("input[type=password]", argilla.password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "sign-in" not in url, timeout=30_000)
        page.goto(f"{argilla.url}/dataset/{ds['id']}/annotation-mode", wait_until="networkidle")
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = page.inner_text("body")
            if "exp-qa" in text and "about clause" in text:
                break
            time.sleep(0.5)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert "exp-qa" in text, f"dataset name not on the page; screenshot: {shot}"
    assert "about clause" in text, f"no record text on the page; screenshot: {shot}"
    assert "of 15" in text, f"the page does not count the dataset's 15 records; screenshot: {shot}"
    assert shot.stat().st_size > 20_000


def test_the_export_flow_pulls_reviews_and_publishes_a_version(run: Path, argilla: Any) -> None:
    """flows/export.py (the scheduled curation pull + export) pulls the decisions before exporting."""
    from flows.export import export_flow

    store = RunStore(run)
    out = export_flow(str(run))
    assert "curation_pull" in out, "a pushed run must be pulled before it is exported"
    decisions, _, key = load_decisions(store)
    assert key and decisions["sample-00001"].decision == "discarded"
    rows = pq.read_table(run / "exports" / "chatml" / "train.parquet").to_pylist()
    assert "sample-00001" not in {r["id"] for r in rows} and len(rows) == 47


def _dataset(argilla: Any, name: str) -> dict[str, Any]:
    with _owner(argilla) as c:
        ds = next(d for d in c.get("/api/v1/me/datasets").json()["items"] if d["name"] == name)
        full = c.get(f"/api/v1/datasets/{ds['id']}").json()
        full["questions"] = {q["name"]: q for q in c.get(f"/api/v1/datasets/{ds['id']}/questions").json()["items"]}
        return dict(full)


def test_pushed_datasets_carry_the_guidelines_and_a_push_updates_them(run: Path, argilla: Any) -> None:
    """Read back through the HTTP API: each dataset's guidelines are its kind's text from
    prompts/review_guidelines/, the quality question says what 1 and 5 mean, and a dataset pushed
    with older texts gets the current ones on the next push."""
    from datapipe.curate.guidelines import load_guidelines

    assert _cli("curate", "push", str(run)).exit_code == 0
    for kind in ("instruction", "qa", "preference"):
        ds = _dataset(argilla, f"exp-{kind}")
        guide = load_guidelines(kind)
        assert ds["guidelines"] == guide.text
        for criterion in (
            "names its subject",
            "supported by the source context",
            "language of the source context",
            "verbatim copy",
            "| 5 | ready to train on",
        ):
            assert criterion in ds["guidelines"], f"{kind}: guidelines lack {criterion!r}"
        quality = ds["questions"]["quality"]
        assert "1 = unusable" in quality["title"] and "5 = ready to train on" in quality["title"]
        assert "5 ready to train on" in quality["description"] and "1 unusable" in quality["description"]
        assert "whole response" in ds["questions"]["correction"]["description"]
    assert "clearly better *in quality*" in _dataset(argilla, "exp-preference")["guidelines"]
    assert "taxonomy" in _dataset(argilla, "exp-qa")["guidelines"]
    facts = RunStore(run).read_json("curate", "push.json")
    assert facts["guidelines"]["exp-qa"]["hash"] == load_guidelines("qa").hash

    # A dataset pushed by an older datapipe (other guidelines and question texts) is brought up to date.
    ds = _dataset(argilla, "exp-qa")
    with _owner(argilla) as c:
        c.patch(f"/api/v1/datasets/{ds['id']}", json={"guidelines": "Keep or discard each record."}).raise_for_status()
        q = ds["questions"]["quality"]
        c.patch(f"/api/v1/questions/{q['id']}", json={"title": "Quality (1 poor - 5 excellent)"}).raise_for_status()
    assert _dataset(argilla, "exp-qa")["guidelines"] == "Keep or discard each record."
    assert _cli("curate", "push", str(run)).exit_code == 0
    again = _dataset(argilla, "exp-qa")
    assert again["guidelines"] == load_guidelines("qa").text
    assert again["questions"]["quality"]["title"] == load_guidelines("qa").questions["quality"].title


def test_samples_a_later_run_no_longer_has_are_removed_on_push(argilla: Any, tmp_path: Path) -> None:
    """The filter output changes between pushes (some samples gone, some new, no QA left): the next push
    deletes the records of the vanished samples, counts them in push.json and leaves the rest with their reviews."""
    run_dir = make_run(tmp_path, _samples(), pairs=[make_pair(i) for i in range(6)])
    _set_curate(run_dir, api_url=argilla.url, workspace="review", dataset_prefix="stale")
    assert _cli("curate", "push", str(run_dir)).exit_code == 0
    ins = _ids(argilla, "stale-instruction")
    with _reviewer(argilla, "rev-stale") as rev:
        _review(rev, ins["sample-00003"], keep="keep", quality=4)  # reviewed, then it vanishes
        _review(rev, ins["sample-00010"], keep="keep", quality=5)  # reviewed, and it stays

    store = RunStore(run_dir)
    key = store.current_keys("filter")[0]
    gone = {f"sample-{i:05d}" for i in (1, 2, 3, 4)}
    now = [s for s in _samples() if s.kind == "instruction" and s.id not in gone]
    now += [make_sample(i) for i in (90, 91)]  # new samples
    store.write_shard("filter", key, Sample.to_table(now), store.read_shard_rejects("filter", key))
    pushed = _cli("curate", "push", str(run_dir))
    assert pushed.exit_code == 0, pushed.output
    assert "removed (stale)" in pushed.output

    datasets = store.read_json("curate", "push.json")["datasets"]
    assert datasets["stale-instruction"] == {
        "records": 33,
        "new": 2,
        "updated": 31,
        "removed_stale": 4,
        "removed_stale_reviewed": 1,
        "on_server": 33,
    }
    assert datasets["stale-qa"]["removed_stale"] == 15 and datasets["stale-qa"]["on_server"] == 0
    assert datasets["stale-preference"]["removed_stale"] == 0 and datasets["stale-preference"]["on_server"] == 6
    on_server = _records(argilla, "stale-instruction")
    assert {r["external_id"] for r in on_server} == {s.id for s in now}
    assert _records(argilla, "stale-qa") == []
    with _owner(argilla) as c:  # the review of a record that stays is still there
        ds_id = on_server[0]["dataset_id"]
        body = c.get(f"/api/v1/datasets/{ds_id}/records", params={"limit": 1000, "include": ["responses"]})
        body.raise_for_status()
    kept = next(r for r in body.json()["items"] if r["external_id"] == "sample-00010")
    assert [r["values"]["quality"]["value"] for r in kept["responses"]] == [5]


def test_the_argilla_ui_shows_the_guidelines(run: Path, argilla: Any) -> None:
    """Headless Chromium opens a pushed dataset's record view and the Guidelines panel: the criteria are on screen."""
    from playwright.sync_api import sync_playwright

    assert _cli("curate", "push", str(run)).exit_code == 0
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run `bash scripts/setup.sh` as root, or apt-get install chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "argilla-ui-guidelines.png"
    with _owner(argilla) as c:
        ds = next(d for d in c.get("/api/v1/me/datasets").json()["items"] if d["name"] == "exp-instruction")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{argilla.url}/sign-in", wait_until="networkidle")
        page.fill("input[name=username], input#username, input[type=text]", argilla.username)
        page.fill("input[type=password]", argilla.password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "sign-in" not in url, timeout=30_000)
        page.goto(f"{argilla.url}/dataset/{ds['id']}/annotation-mode", wait_until="networkidle")
        page.get_by_text("about clause").first.wait_for(timeout=30_000)
        page.get_by_text("Guidelines", exact=True).first.click()
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = page.inner_text("body")
            if "Keep it when all of these hold" in text:
                break
            time.sleep(0.5)
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert "Keep it when all of these hold" in text, f"the guidelines panel did not open; screenshot: {shot}"
    assert "The question stands on its own" in text and "about clause" in text, f"screenshot: {shot}"
    assert "1 = unusable" in text, f"the quality question's title is not on the page; screenshot: {shot}"
