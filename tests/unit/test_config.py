from __future__ import annotations

import json
from pathlib import Path

import pytest

from datapipe.config import load_config
from datapipe.errors import ConfigError
from datapipe.runs import load_target, snapshot_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "sources: [docs]\n"))
    assert cfg.run_id == "pipeline"
    assert cfg.teacher.backend == "llamacpp"
    assert cfg.run_dir == tmp_path / "runs" / "pipeline"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("sources: [d]\nchunk:\n  max_tokns: 10\n", "chunk.max_tokns", id="unknown-nested-key"),
        pytest.param("sources: [d]\nteachr: {}\n", "teachr", id="unknown-top-key"),
        pytest.param("sources: [d]\nchunk:\n  max_tokens: lots\n", "chunk.max_tokens", id="wrong-type"),
        pytest.param("sources: [d]\nteacher:\n  backend: gpt\n", "teacher.backend", id="bad-choice"),
        pytest.param("sources: [d]\nteacher:\n  backend: openai\n", "teacher", id="openai-needs-model"),
        pytest.param("chunk: {}\n", "sources", id="missing-sources"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert key in str(info.value)
    assert str(tmp_path / "pipeline.yaml") in str(info.value)


def test_invalid_yaml_points_at_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.yaml:3: not valid YAML"):
        load_config(_write(tmp_path, "sources: [d]\nchunk:\n\tmax_tokens: 3\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, "sources: !!python/object/apply:os.system ['true']\n"))


def test_snapshot_keeps_env_var_name_not_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    cfg = load_config(
        _write(tmp_path, "sources: [docs]\nteacher:\n  backend: openai\n  model: m\n  api_key_env: MY_TEACHER_KEY\n")
    )
    snap = snapshot_config(cfg)
    text = snap.read_text()
    assert "MY_TEACHER_KEY" in text and secret not in text
    again = load_target(cfg.run_dir)
    assert again.teacher.api_key_env == "MY_TEACHER_KEY"
    assert json.loads(text)["sources"] == [str((tmp_path / "docs").resolve())]
    assert again.run_dir == cfg.run_dir.resolve()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(
            "sources: [d]\nchunk:\n  min_tokens: 4\n  max_tokns: 10\n", ":4: chunk.max_tokns", id="unknown-key"
        ),
        pytest.param("sources: [d]\nteacher:\n\n  max_retries: many\n", ":4: teacher.max_retries", id="wrong-type"),
        pytest.param(
            "sources: [d]\ngenerate:\n  question_params: {top_p: 7}\n",
            ":3: generate.question_params.top_p",
            id="flow-style",
        ),
        pytest.param(
            "sources: [d]\nfilter:\n  decontamination:\n    benchmarks:\n      - {name: x}\n",
            ":5: filter.decontamination.benchmarks.0.path",
            id="missing-in-list",
        ),
    ],
)
def test_config_errors_point_at_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert f"{tmp_path / 'pipeline.yaml'}{where}" in str(info.value)


def test_api_key_in_place_of_its_variable_name_is_refused_unechoed(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefABCDEF0123456789"
    with pytest.raises(ConfigError) as info:
        load_config(
            _write(tmp_path, f"sources: [d]\nteacher:\n  backend: openai\n  model: m\n  api_key_env: {secret}\n")
        )
    message = str(info.value)
    assert "pipeline.yaml:5: teacher.api_key_env" in message and "NAME of an environment variable" in message
    assert secret not in message and secret not in repr(info.value)
    assert not (tmp_path / "runs").exists()  # no config.json snapshot holding it


def _alias_bomb(levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nsources: *l{levels - 1}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(_alias_bomb(9), "alias bomb", id="billion-laughs"),
        pytest.param("sources: &s [docs, *s]\n", "contains it", id="self-reference"),
        pytest.param("sources: " + "[" * 3000 + "]" * 3000 + "\n", "too deeply", id="deep-nesting"),
    ],
)
def test_hostile_yaml_is_refused_quickly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_write(tmp_path, text))
    assert "pipeline.yaml" in str(info.value)
