"""The reasons catalogue against the code and the README: every code it lists is emitted somewhere in datapipe/
(it lists no dead reason), every code the README lists is in it, and ``code:arg`` parses in one place."""

from __future__ import annotations

import re

import pytest

from datapipe.reasons import CATALOGUE, is_retryable, meaning, reason_key, split_reason
from tests.conftest import REPO

SOURCES = list((REPO / "datapipe").rglob("*.py"))


def _code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)


def test_every_catalogued_reason_is_emitted_by_some_code() -> None:
    text = _code_text()
    text = text.replace(text[text.index("CATALOGUE: dict[str, Reason]") : text.index("def split_reason")], "")
    # a code appears as a string literal: "code" / "code:..." / f"code:{...}" (or a constant named for it)
    dead = [
        c
        for c in CATALOGUE
        if not re.search(rf"[\"']{re.escape(c)}[\"':]", text) and not re.search(rf"=\s*\"{re.escape(c)}\"", text)
    ]
    assert dead == [], f"catalogued but no code emits them: {dead}"


def test_every_reason_the_readme_lists_is_catalogued_with_a_meaning() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    para = readme[readme.index("Reject reasons so far:") :].split("\n\n", 1)[0]
    listed = {split_reason(c)[0] for c in re.findall(r"`([a-z_]+(?::<[a-z]+>)?)`", para)}
    listed -= {"dropped_by_step"}
    missing = sorted(c for c in listed if c not in CATALOGUE)
    assert len(listed) > 40 and missing == [], f"README lists reasons the catalogue lacks: {missing}"
    assert all(CATALOGUE[c].meaning for c in listed)


@pytest.mark.parametrize(
    ("reason", "parts", "key"),
    [
        ("duplicate_of:s1", ("duplicate_of", "s1"), "duplicate_of"),
        ("contaminated:gsm8k", ("contaminated", "gsm8k"), "contaminated:gsm8k"),
        ("wrong_language:de", ("wrong_language", "de"), "wrong_language:de"),
        ("too_short", ("too_short", ""), "too_short"),
        ("plugin_code:x", ("plugin_code", "x"), "plugin_code:x"),
    ],
)
def test_reason_parsing(reason: str, parts: tuple[str, str], key: str) -> None:
    assert split_reason(reason) == parts
    assert reason_key(reason) == key


def test_meaning_and_retryable_read_the_code_without_its_argument() -> None:
    assert meaning("contaminated:gsm8k") == CATALOGUE["contaminated"].meaning != ""
    assert meaning("plugin_code:x") == ""
    assert is_retryable("teacher_unavailable") and not is_retryable("duplicate_of:s1")
    assert not is_retryable("plugin_code")
