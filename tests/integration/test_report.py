"""`datapipe report` over a real run, checked against the run's manifests and rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.records import Chunk, Sample
from datapipe.report.html import reason_code
from datapipe.store import RunStore
from tests.conftest import REPO
from tests.integration.smallrun import DUPLICATED, make_small_run
from tests.unit.test_report_examples import HOSTILE, hostile_run

pytestmark = pytest.mark.integration
runner = CliRunner()
SECTIONS = ("stages", "rejects", "examples", "lengths", "scores", "duplicates", "coverage", "tokens")
PNG = "data:image/png;base64,"
HEADER_RGB = (0x26, 0x46, 0x53)  # the report's header band
KEPT_RGB = (0x2A, 0x9D, 0x8F)  # "out" / "kept" bars in the figures
ARTIFACTS = Path(os.environ.get("DATAPIPE_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_small_run(tmp_path_factory, "report")


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Path:
    result = runner.invoke(app, ["report", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path = run_dir / "report.html"
    assert str(path) in result.output.replace("\n", "")
    return path


def facts_of(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="datapipe-report-data">(.*?)</script>', page, re.S)
    assert m, "the report has no embedded data block"
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} is missing"
    return m.group(1)


def test_report_numbers_match_the_manifests(run_dir: Path, report: Path) -> None:
    store = RunStore(run_dir)
    page = report.read_text(encoding="utf-8")
    facts = facts_of(page)
    for sid in SECTIONS:
        section(page, sid)
    assert facts["problems"] == []

    manifests: dict[str, dict[str, Any]] = {}
    for stage in ("extract", "chunk", "generate", "filter", "export", "publish"):
        m = store.read_manifest(stage)
        assert m is not None, f"the small run has no {stage} manifest"
        manifests[stage] = m
    assert [s["stage"] for s in facts["stages"]] == list(manifests)
    stage_table = section(page, "stages")
    for row in facts["stages"]:
        counts = manifests[row["stage"]]["counts"]
        assert (row["in"], row["out"], row["rejected"]) == (counts["in"], counts["out"], counts.get("rejected", 0))
        cells = f'<td class="num">{counts["in"]}</td><td class="num">{counts["out"]}</td>'
        assert cells in stage_table, f"the {row['stage']} row does not show {counts}"

    expected_reasons: dict[str, Counter[str]] = {}
    for stage, m in manifests.items():
        for reason, n in m["rejects_by_reason"].items():
            expected_reasons.setdefault(stage, Counter())[reason_code(reason)] += n
    assert facts["rejects_by_reason"] == {s: dict(c) for s, c in expected_reasons.items()}
    assert facts["rejects_by_reason"]["extract"] == {"duplicate_of": 1}  # the planted copy

    for stage in ("generate", "filter"):
        teacher = manifests[stage]["teacher"]
        assert facts["tokens"][stage]["input_tokens"] == teacher["input_tokens"]
        assert facts["tokens"][stage]["output_tokens"] == teacher["output_tokens"]
        assert f'<td class="num">{teacher["requests"]:,}</td>' in section(page, "tokens")

    # the duplicated document: one cluster of two in extract, shown with the kept copy's path
    assert facts["duplicates"]["sizes"] == {"extract: duplicate_of": {"2": 1}}
    assert DUPLICATED in section(page, "duplicates")

    chunks = Counter(c.source_path for c in store.iter_records("chunk", Chunk))
    generated = Counter(s.source_path for s in (x.provenance for x in store.iter_records("generate", Sample)))
    kept = list(store.iter_records("filter", Sample))
    kept_by_source = Counter(s.provenance.source_path for s in kept)
    assert set(facts["coverage_sources"]) == set(chunks)
    for path, row in facts["coverage_sources"].items():
        assert row == {"chunks": chunks[path], "generated": generated[path], "kept": kept_by_source[path]}
    assert f"{len(chunks)} source documents" in section(page, "coverage")
    assert 'class="nodata"' in section(page, "coverage")  # no taxonomy in this run: a note, not a crash
    for key, row in facts["scores"].items():
        assert row["kept"] == sum(1 for s in kept if key in s.scores)

    # example records: real kept samples of each kind, and a few rejects for every stage and reason there is
    kept_ids = {s.id for s in kept}
    assert facts["examples"]["kept"], "no kept examples"
    for kind, ids in facts["examples"]["kept"].items():
        assert ids and set(ids) <= kept_ids, kind
    reasons = {f"{s}:{r}" for s, c in expected_reasons.items() for r in c}
    assert set(facts["examples"]["rejected"]) == reasons
    examples = section(page, "examples")
    for ids in facts["examples"]["kept"].values():
        assert all(i in examples for i in ids)


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    images = [s for s in sources if s.startswith("data:")]
    assert len(images) >= 6, f"expected a figure per view, found {len(images)} images"
    for src in images:
        assert src.startswith(PNG)
        assert base64.b64decode(src[len(PNG) :])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(s.startswith(("data:", "#")) for s in sources), [s[:60] for s in sources]
    for external in ("<link", "@import", "url(", "<iframe", "<object", "<embed", "<script src"):
        assert external not in page
    assert not re.search(r'<script(?![^>]*type="application/json")', page), "the report runs no scripts"


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is not installed: run `bash scripts/setup.sh` as root (it installs Debian's chromium) "
            "or `apt-get install --no-install-recommends chromium`"
        )
    out = tmp_path / "report.html"
    config = run_dir.parents[1] / "pipeline.yaml"
    result = runner.invoke(app, ["report", str(config), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    png = tmp_path / "report.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        "--window-size=1280,2000",
        out.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png.is_file(), f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert png.stat().st_size > 50_000, f"the screenshot is suspiciously small: {png.stat().st_size} bytes"
    with Image.open(png) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1280, 2000)
    colours = rgb.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 100, f"the screenshot has only {len(colours)} colours: a blank or broken page"
    assert _near(rgb.getpixel((5, 5)), HEADER_RGB), "the header band (inline CSS) did not render"
    kept_pixels = sum(n for n, c in colours if _near(c, KEPT_RGB))
    assert kept_pixels > 2_000, "the first figure's bars are not on screen: the inline PNGs did not render"


def _near(c: Any, ref: tuple[int, int, int], tol: int = 6) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(c, ref, strict=True))


def _chromium() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `bash scripts/setup.sh` as root or `apt-get install chromium`")
    return chromium


def test_report_screenshots_show_the_chart_and_examples(run_dir: Path, report: Path, tmp_path: Path) -> None:
    """Screenshots for people (test-artifacts/report-*.png): the first chart and the example records,
    with the first folded text opened, as Chromium renders them."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(report.as_uri(), wait_until="load")
        page.locator("section#stages").screenshot(path=str(ARTIFACTS / "report-stages.png"))
        examples = page.locator("section#examples")
        examples.locator("details").first.evaluate("d => d.open = true")
        examples.screenshot(path=str(ARTIFACTS / "report-examples.png"))
        shown = examples.inner_text()
        browser.close()
    facts = facts_of(report.read_text(encoding="utf-8"))
    first_kept = next(iter(facts["examples"]["kept"].values()))[0]
    assert first_kept in shown and "Rejected, per stage and reason" in shown
    for name in ("report-stages.png", "report-examples.png"):
        with Image.open(ARTIFACTS / name) as im:
            assert im.size[0] > 600 and im.size[1] > 200, name


def test_a_hostile_sample_renders_as_text(tmp_path: Path) -> None:
    """A sample whose question holds a script tag and markup: Chromium shows the characters, runs nothing."""
    from playwright.sync_api import sync_playwright

    from datapipe.report.html import write_report

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = write_report(hostile_run(tmp_path / "run"), tmp_path / "hostile.html")
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(Path(out).as_uri(), wait_until="load")
        text = page.locator("section#examples").inner_text()
        bold = page.locator("section#examples b", has_text="bold").count()
        page.locator("section#examples").screenshot(path=str(ARTIFACTS / "report-hostile-examples.png"))
        browser.close()
    assert HOSTILE in text, "the script tag and markup are not shown as text"
    assert dialogs == [] and bold == 0, "markup from a sample was interpreted"
