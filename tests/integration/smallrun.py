"""A small real run for the report and notebook tests: the demo documents on the embedded teacher.

One document is added twice under another name, so extract rejects it as ``duplicate_of:<id>``
and the report has a real duplicate cluster; the judge scores instruction samples too, so
there are real judge scores. The teacher's response cache lives in the session's temporary
folder, so a second small run in the same session makes no teacher calls.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.runs import load_target
from tests.conftest import REPO, TINY_TEACHER_FILTER, write_config

EXAMPLE_DOCS = REPO / "examples" / "docs"
DUPLICATED = "ideas-page.html"


def make_small_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, store: str = "runs", **store_options: Any
) -> Path:
    """Run the whole flow through the CLI and return the run folder (a UPath when ``store`` is a URL)."""
    tmp = tmp_path_factory.mktemp(name)
    copies = tmp / "copies"
    copies.mkdir()
    shutil.copy(EXAMPLE_DOCS / DUPLICATED, copies / f"copy-of-{DUPLICATED}")
    cache = tmp_path_factory.getbasetemp() / "smallrun-teacher-cache" / "teacher.sqlite"
    cfg = write_config(
        tmp / "pipeline.yaml",
        run_id="small",
        store=store,
        **({"store_options": store_options} if store_options else {}),
        sources=[str(EXAMPLE_DOCS), str(copies)],
        teacher={"backend": "llamacpp", "cache_path": str(cache)},
        generate={
            # plumbing, not prompt quality: the 135M teacher follows v1's simpler question prompt more often
            "prompt_version": "v1",
            "questions_per_chunk": 1,
            "max_chunks": 3,
            "question_params": {"max_new_tokens": 40},
            "answer_params": {"max_new_tokens": 48},
        },
        filter={**TINY_TEACHER_FILTER, "judge": {"enabled": True, "kinds": ["instruction"]}},
    )
    result = CliRunner().invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return load_target(str(cfg)).run_dir
