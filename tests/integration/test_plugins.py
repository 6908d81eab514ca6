"""A generation kind and a per-sample check added the documented way (tests/plugins/toy.py, quoted in README
"Adding a generation kind" / "Adding a filter"), run through the real pipeline on the real llama.cpp server.
The same plugin under the Ray runner: tests/integration/test_ray_runner.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.errors import ConfigError
from datapipe.records import Chunk, Sample
from datapipe.store import RunStore
from tests.conftest import REPO, TINY_TEACHER_FILTER, LlamaServer, write_config

pytestmark = pytest.mark.integration
runner = CliRunner()
TOY = REPO / "tests" / "plugins" / "toy.py"


def plugin_config(tmp: Path, corpus_docs: Path, llama_server: LlamaServer, **extra: Any) -> Path:
    docs = tmp / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ["handbook-1p.docx"]:
        shutil.copy(corpus_docs / name, docs / name)
    return write_config(
        tmp / "pipeline.yaml",
        run_id="toy",
        store="runs",
        plugins=["tests.plugins.toy"],
        sources=["docs"],
        teacher={"backend": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 1},
        generate={"kinds": ["summary"]},
        filter={
            "grounding": {"enabled": False},
            "semantic_dedup": {"enabled": False},
            "min_response_tokens": 0,
            **TINY_TEACHER_FILTER,
            "checks": {"max_digits": {"limit": 3}},
        },
        **extra,
    )


def check_toy_run(run_dir: Path) -> None:
    """The toy kind made one sample or reject per chunk, and the toy check dropped exactly the answers with
    more than 3 digits that reached it."""
    store = RunStore(run_dir)
    chunks = list(store.iter_records("chunk", Chunk))
    samples = list(store.iter_records("generate", Sample))
    assert samples and len(samples) + sum(1 for _ in store.iter_rejects("generate")) == len(chunks)
    assert {s.provenance.teacher_calls[0].prompt_name for s in samples} == {"toy_summary"}
    kept = list(store.iter_records("filter", Sample))
    digits = [r for r in store.iter_rejects("filter") if r.reason == "too_many_digits"]
    assert all(s.verdicts["max_digits"] == "pass" and sum(c.isdigit() for c in s.response) <= 3 for s in kept)
    by_id = {s.id: s for s in samples}
    assert all(sum(c.isdigit() for c in by_id[r.record_id].response) > 3 for r in digits)
    assert all("filter.checks.max_digits.limit=3" in r.detail for r in digits)
    # the check saw every sample the built-in checks kept: those with >3 digits are exactly its rejects
    earlier = {r.record_id for r in store.iter_rejects("filter") if r.reason != "too_many_digits"}
    reached = [s for s in samples if s.id not in earlier]
    assert {s.id for s in reached if sum(c.isdigit() for c in s.response) > 3} == {r.record_id for r in digits}


def test_toy_kind_and_check_run_through_the_pipeline(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer
) -> None:
    config = plugin_config(tmp_path, corpus_docs, llama_server)
    run_dir = tmp_path / "runs" / "toy"
    for args in (["extract", str(config)], ["chunk", str(run_dir)], ["generate", str(run_dir)],
                 ["filter", str(run_dir)]):  # fmt: skip
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    check_toy_run(run_dir)


def test_unknown_kind_and_check_are_named_in_the_config_error(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    bad = write_config(tmp_path / "pipeline.yaml", sources=["docs"], generate={"kinds": ["no_such_kind"]})
    result = runner.invoke(app, ["extract", str(bad)])
    assert result.exit_code == 2 and "unknown generation kind(s) ['no_such_kind']" in result.output, result.output
    assert "plugins:" in result.output
    bad = write_config(tmp_path / "p2.yaml", sources=["docs"], plugins=["tests.plugins.nope"])
    result = runner.invoke(app, ["extract", str(bad)])
    assert result.exit_code == 2 and "cannot import 'tests.plugins.nope'" in result.output, result.output
    bad = write_config(tmp_path / "p3.yaml", sources=["docs"], filter={"checks": {"no_such_check": {}}})
    from datapipe.filter import build_filters
    from datapipe.runs import load_target

    with pytest.raises(ConfigError, match=r"filter.checks: no check registered as \['no_such_check'\]"):
        build_filters(load_target(str(bad)).filter)


def test_readme_quotes_the_toy_plugin() -> None:
    """The README's worked examples are this module, which the tests above run."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    source = TOY.read_text(encoding="utf-8")
    kind = next(b for b in blocks if '@register_kind("summary")' in b)
    check = next(b for b in blocks if '@per_sample_check("max_digits")' in b)
    batch = next(b for b in blocks if '@batch_check("max_per_source")' in b)
    assert kind.strip() in source and check.strip() in source and batch.strip() in source
