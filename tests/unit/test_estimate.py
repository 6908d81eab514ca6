"""`datapipe run --dry-run` loops the kinds registry: a kind without an estimator (the toy plugin's `summary`,
tests/plugins/toy.py) is reported as not estimated, never counted as free. The figures of instruction/qa are
checked on a real run by tests/integration/test_refresh.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.estimate import estimate_instruction, estimate_run
from datapipe.generate.kinds import estimator_of
from datapipe.pipeline import run_chunk, run_extract
from datapipe.runs import load_target
from tests.conftest import write_config


def _config(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "note.txt").write_text(
        "Norwich City Football Club was founded in 1902 and plays its home games at Carrow Road. " * 3,
        encoding="utf-8",
    )
    return write_config(
        tmp_path / "pipeline.yaml",
        store="runs",
        run_id="dry",
        plugins=["tests.plugins.toy"],
        sources=["docs"],
        generate={"kinds": ["instruction", "summary"], "questions_per_chunk": 2},
    )


def test_a_kind_without_an_estimator_is_reported_not_estimated(tmp_path: Path) -> None:
    cfg = load_target(str(_config(tmp_path)))
    run_extract(cfg)
    run_chunk(cfg)
    assert estimator_of("instruction") is estimate_instruction and estimator_of("summary") is None
    est = estimate_run(cfg)
    assert est["not_estimated"] == ["summary"]
    steps = {s["step"]: s for s in est["steps"]}
    assert list(steps) == ["instruction questions", "instruction answers", "summary", "filter judge"]
    assert not steps["summary"]["exact"] and "not estimated" in steps["summary"]["note"]
    assert not est["total"]["exact"]


def test_the_dry_run_table_shows_unknown_figures_for_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(app, ["run", str(config), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    row = next(line for line in out.splitlines() if line.startswith("│ summary"))
    assert row.count("?") == 4, row
    questions = next(line for line in out.splitlines() if line.startswith("│ instruction questions"))
    assert int(questions.split("│")[2]) >= 1  # the one chunk's question request, counted
    assert "not estimated (no estimator registered): summary; the total leaves them out" in out
