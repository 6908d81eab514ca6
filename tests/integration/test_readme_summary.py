"""The README's sample of the demo's closing output has the shape `datapipe run` prints today.

The summary is produced by the real code path: `datapipe run` (the CLI the demo calls) on the demo's own
pipeline.yaml, made smaller (fewer chunks, shorter generations) so it runs in about a minute on the embedded
teacher. Numbers differ from the README's and are not compared; the shape is: the tables and their column
headers, the stages in the run table, and the closing lines with numbers and paths blanked out. When
someone adds a stage, a column or a closing line, this test fails until the README shows it too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from datapipe.cli import app
from tests.conftest import REPO

pytestmark = pytest.mark.integration
README = REPO / "README.md"
MARK = "The closing summary of `bash scripts/demo.sh`"
WIDTH = "200"


def readme_sample() -> str:
    text = README.read_text(encoding="utf-8")
    assert MARK in text, f"README.md has no paragraph starting {MARK!r}"
    after = text[text.index(MARK) :]
    block = after.split("```", 2)[1]
    return block.split("\n", 1)[1]  # without the fence's language tag


def _cells(line: str, sep: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(sep).split(sep)]


def shape(output: str) -> dict[str, Any]:
    """Tables (title's first word, column headers, first-column values of the run table) and closing lines."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    tables: list[dict[str, Any]] = []
    loose: list[str] = []  # lines outside tables since the last one ended
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("┏"):
            loose.append(line)
            i += 1
            continue
        title = " ".join(loose).split(" ")[0] if loose else ""
        loose = []
        header: list[list[str]] = []
        i += 1
        while not lines[i].startswith("┡"):
            header.append(_cells(lines[i], "┃"))
            i += 1
        columns = [" ".join(part for part in col if part) for col in zip(*header, strict=True)]
        first: list[str] = []
        i += 1
        while not lines[i].startswith("└"):
            if lines[i].startswith("│"):
                cell = _cells(lines[i], "│")[0]
                if cell:
                    first.append(cell)
            i += 1
        i += 1
        tables.append({"title": title, "columns": columns, "first_column": first})
    # numbers (and "none", a count that is nought, e.g. tokens per kept sample with no sample kept) -> N
    closing = [re.sub(r"\d+(\.\d+)?|\bnone\b", "N", re.sub(r"\S*/\S+", "PATH", ln)) for ln in loose]
    return {"tables": tables, "closing": closing}


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("readme-demo")
    cfg = yaml.safe_load((REPO / "examples" / "pipeline.yaml").read_text(encoding="utf-8"))
    cfg["store"] = str(tmp / "runs")
    cfg["sources"] = [str(REPO / "examples" / "docs")]
    cfg["taxonomy"]["root"] = str(REPO / "taxonomies")
    cfg["teacher"]["cache_path"] = str(tmp / "teacher.sqlite")
    gen = cfg["generate"]
    gen["max_chunks"] = 2
    gen["question_params"]["max_new_tokens"] = 32
    gen["answer_params"]["max_new_tokens"] = 40
    gen["qa"]["samples_per_leaf"] = 1
    gen["qa"]["params"]["max_new_tokens"] = 40
    gen["preference"]["max_prompts"] = 1
    for c in gen["preference"]["candidates"]:
        c["max_new_tokens"] = 24
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(path)], env={"COLUMNS": WIDTH}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_the_readme_shows_the_summary_the_demo_prints(demo_output: str) -> None:
    want, have = shape(readme_sample()), shape(demo_output)
    assert have["tables"], f"no summary table in the output of `datapipe run`:\n{demo_output}"
    assert [t["title"] for t in want["tables"]] == [t["title"] for t in have["tables"]], demo_output
    for w, h in zip(want["tables"], have["tables"], strict=True):
        assert w["columns"] == h["columns"], f"table {h['title']!r}: README {w['columns']} != {h['columns']}"
    assert want["tables"][0]["first_column"] == have["tables"][0]["first_column"], "the stages differ"
    assert want["closing"] == have["closing"], "the closing lines differ (numbers and paths blanked)"


def test_the_shape_check_can_fail() -> None:
    """A sample with a missing column, a missing stage or another closing line does not pass as the same shape."""
    sample = readme_sample()
    base = shape(sample)
    assert shape(sample.replace("┃ rejected ┃", "┃ dropped  ┃", 1)) != base
    publish_row = next(ln for ln in sample.splitlines() if ln.startswith("│ publish"))
    assert shape(sample.replace(publish_row + "\n", "")) != base
    assert shape(sample + "\ntokens per kept sample: 812\n") != base
