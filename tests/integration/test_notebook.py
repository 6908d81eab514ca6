"""notebooks/explore_run.ipynb, executed top to bottom (nbclient, the venv's ipykernel) on a small real run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from datapipe.store import RunStore
from tests.conftest import REPO
from tests.integration.smallrun import make_small_run

pytestmark = pytest.mark.integration
NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_small_run(tmp_path_factory, "notebook")


def _manifest(store: RunStore, stage: str) -> dict[str, Any]:
    m = store.read_manifest(stage)
    assert m is not None, f"the small run has no {stage} manifest"
    return m


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the notebook printed or displayed, and how many figures it drew."""
    texts, figures = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            elif "data" in out:
                texts.append(out.data.get("text/plain", ""))
                figures += "image/png" in out.data
    return "\n".join(texts), figures


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"


def test_notebook_runs_top_to_bottom(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPIPE_RUN", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failing cell
    text, figures = _outputs(nb)

    assert f"kernel python: {sys.executable}" in text, "the notebook ran on another interpreter than the venv's"
    assert f"run: {run_dir.resolve()}" in text
    store = RunStore(run_dir)
    counts = {s: _manifest(store, s)["counts"] for s in ("extract", "chunk", "generate", "filter")}
    n_rejects = sum(1 for s in ("extract", "chunk", "generate", "filter") for _ in store.iter_rejects(s))
    assert (
        f"documents {counts['extract']['out']} | chunks {counts['chunk']['out']} | samples {counts['generate']['out']} "
        f"| kept {counts['filter']['out']} | pairs 0 | rejects {n_rejects}"
    ) in text
    gen, judge = _manifest(store, "generate")["teacher"], _manifest(store, "filter")["teacher"]
    assert (
        f"total tokens: input {gen['input_tokens'] + judge['input_tokens']} "
        f"| output {gen['output_tokens'] + judge['output_tokens']}"
    ) in text
    assert "duplicate clusters 1 | duplicates rejected 1" in text  # the planted copy of a document
    assert "no data: no sample comes from a taxonomy leaf" in text
    assert figures >= 7, f"expected the report's views as figures, got {figures}"
