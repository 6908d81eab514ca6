"""Example records in the HTML report, and the stage chart's labels, over hand-made runs.

The runs are written the way stages write them (``write_shard`` + ``StageRecorder``, see
test_report_html.py), with texts a teacher or a document can really contain: markup, a script tag,
long answers, and reject reasons the report has never heard of.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from datapipe.records import Reject, Sample
from datapipe.report.examples import PER_GROUP
from datapipe.report.html import UNITS, build_report, stages_figure
from datapipe.store import STAGES, RunStore
from tests.unit.test_report_html import _sample, _stage, facts_of, section

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
LONG = "The leave policy grants twenty days. " * 40


def _smallest(ids: list[str], n: int = PER_GROUP) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:n]


def hostile_run(root: Path) -> RunStore:
    """A generate and a filter stage whose kept and rejected samples carry markup, a script tag and long texts."""
    store = RunStore(root)
    a = "/data/docs/a.md"
    generated = [_sample(f"s{i:02d}", a, f"answer {i}") for i in range(12)]
    _stage(store, "generate", "g", Sample.to_table(generated), 3, 12, [])
    kept = [_sample(f"s{i:02d}", a, f"answer {i}", judge_quality=4) for i in range(8)]
    first = _smallest([s.id for s in kept])[0]  # one the report will show
    kept = [
        s.model_copy(update={"instruction": "What does " + HOSTILE + " say?", "response": LONG}) if s.id == first else s
        for s in kept
    ]
    kept.append(_sample("q1", a, "a leaf answer", taxonomy="knowledge/leave"))
    s8, s9, s10, s11 = generated[8:]
    rejects = [
        Reject(
            stage="filter",
            record_id="s08",
            reason="not_self_contained",  # a reason this report has no special case for
            detail="question points at the source: 'the text' " + HOSTILE,
            source_path=a,
            payload=s8.model_dump_json(),
        ),
        Reject(
            stage="filter",
            record_id="s09",
            reason="low_faithfulness",
            detail="judge faithfulness 1 < 3",
            source_path=a,
            payload=json.dumps({"sample": json.loads(s9.model_dump_json()), "judge_output": "Faithfulness: 1"}),
        ),
        Reject(
            stage="filter",
            record_id="s10",
            reason="duplicate_of:s01",  # as the filter's near dedup writes it (datapipe/filter/dedup.py)
            detail="near (MinHash) duplicate (similarity 0.912)",
            source_path=a,
            payload=s10.model_dump_json(),
        ),
        Reject(
            stage="filter",
            record_id="s11",
            reason="duplicate_of:s02",  # as the filter's near dedup writes it (datapipe/filter/dedup.py)
            detail="near (MinHash) duplicate (similarity 0.887)",
            source_path=a,
            payload=s11.model_dump_json(),
        ),
    ]
    _stage(store, "filter", "f", Sample.to_table(kept), 12, len(kept), rejects)
    return store


@pytest.fixture()
def run(tmp_path: Path) -> RunStore:
    return hostile_run(tmp_path / "run")


def test_examples_show_kept_and_rejected_records_escaped(run: RunStore) -> None:
    page = build_report(run)
    facts = facts_of(page)
    ex = section(page, "examples")

    kept_ids = [s.id for s in run.iter_records("filter", Sample) if s.kind == "instruction"]
    assert facts["examples"]["kept"] == {"instruction": _smallest(kept_ids), "qa": ["q1"]}
    assert facts["examples"]["rejected"] == {
        "filter:low_faithfulness": ["s09"],
        "filter:duplicate_of": _smallest(["s10", "s11"]),
        "filter:not_self_contained": ["s08"],
    }
    assert f"instruction: {PER_GROUP} of 8" in ex and "qa: 1 of 1" in ex
    assert "filter: duplicate_of (2 of 2)" in ex

    # every text is escaped: the script tag in a question and in a detail shows as text
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert re.findall(r"<script\b", page) == ["<script"], "only the JSON data block may be a script element"
    assert "question points at the source: &#x27;the text&#x27; &lt;script&gt;alert(&quot;x&quot;)" in ex
    # the reject's detail, full reason and source are shown; the dropped sample's texts come from its payload
    assert "judge faithfulness 1 &lt; 3" in ex and "duplicate_of:s0" in ex and "/data/docs/a.md" in ex
    assert "What does s09 say?" in ex


def test_the_hostile_sample_is_escaped_and_its_long_answer_folded(run: RunStore) -> None:
    page = build_report(run)
    ex = section(page, "examples")
    assert "What does &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; say?" in ex
    folded = re.findall(r"<details class=\"extext\"><summary>(.*?)</summary><pre>(.*?)</pre></details>", ex, re.S)
    long_ones = [(s, body) for s, body in folded if s.startswith("response (")]
    assert long_ones, "the long response is not folded"
    summary, body = long_ones[0]
    assert f"({len(LONG):,} chars)" in summary and body.strip() == LONG.strip()
    assert any(s.startswith("source context") for s, _ in folded), "the source context is not folded"


def test_examples_are_deterministic(run: RunStore) -> None:
    strip = re.compile(r"written \d{4}-\d\d-\d\d [^<]*")
    assert strip.sub("", build_report(run)) == strip.sub("", build_report(run))


def test_examples_without_records_say_no_data(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.root.mkdir(parents=True)
    ex = section(build_report(store), "examples")
    assert ex.count('class="nodata"') == 2


@pytest.mark.parametrize("n", range(1, len(STAGES) + 1), ids=lambda n: f"{n}-stages")
def test_stage_chart_labels_do_not_overlap(n: int) -> None:
    stages = [{"stage": s, "unit": UNITS.get(s, "records"), "in": 10, "out": 8, "rejected": 2} for s in STAGES[:n]]
    fig = stages_figure(stages)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) == n
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, f"tick labels overlap: {left} / {right}"
