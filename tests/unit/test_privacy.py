"""The privacy layer on its own: real Presidio with the installed spaCy model, no teacher."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from upath import UPath

from datapipe.config import PipelineConfig, PrivacyConfig, TeacherConfig
from datapipe.errors import ConfigError
from datapipe.privacy import Privacy, Vault, check_routing, leak_rejects, reidentify_value
from datapipe.records import Message, Provenance, Sample

DOC_A = (
    "Anna Schneider leads the finance team. Write to anna.schneider@example.com or call +49 30 1234567. "
    "Refunds go to DE89370400440532013000."
)
DOC_B = "Die Rechnung hat Anna Schneider freigegeben. Rückfragen an anna.schneider@example.com, Tel. 030 12345678."


def _tax_id(prefix: str = "6512379480") -> str:
    """A German tax ID with a valid check digit (ISO 7064 Mod 11,10), as the Bundeszentralamt issues them."""
    product = 10
    for d in prefix:
        total = (int(d) + product) % 10 or 10
        product = (total * 2) % 11
    return prefix + str((11 - product) % 10)


def _layer(tmp_path: Path, mode: str = "pseudonymize") -> Privacy:
    return Privacy(PrivacyConfig(mode=mode), UPath(tmp_path / "run"))  # type: ignore[arg-type]


def test_same_value_gets_the_same_pseudonym_across_documents_and_runs(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    a, b = layer.protect(DOC_A), layer.protect(DOC_B)
    for real in ("Anna Schneider", "anna.schneider@example.com", "DE89370400440532013000", "+49 30 1234567"):
        assert real not in a and real not in b
    tokens_a, tokens_b = set(re.findall(r"\[[A-Z_]+_[0-9a-f]{8}\]", a)), set(re.findall(r"\[[A-Z_]+_[0-9a-f]{8}\]", b))
    shared = tokens_a & tokens_b
    assert any(t.startswith("[PERSON_") for t in shared) and any(t.startswith("[EMAIL_ADDRESS_") for t in shared)
    layer.flush()
    # a new process on the same run (a re-run): the same placeholders, so cached requests stay identical
    assert _layer(tmp_path).protect(DOC_A) == a
    mapping = Vault.read_mapping(UPath(tmp_path / "run"))
    assert {v["value"] for v in mapping.values()} >= {"Anna Schneider", "anna.schneider@example.com"}
    for f in (tmp_path / "run" / "privacy").iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    # another run has another salt: its pseudonyms cannot be matched against this one's
    assert Privacy(PrivacyConfig(mode="pseudonymize"), UPath(tmp_path / "other")).protect(DOC_A) != a


def test_different_people_get_different_pseudonyms(tmp_path: Path) -> None:
    out = _layer(tmp_path).protect("Mr. Peter Braun met Mrs. Julia Hoffmann in the lobby.")
    persons = set(re.findall(r"\[PERSON_[0-9a-f]{8}\]", out))
    assert len(persons) == 2, out


def test_redact_uses_typed_placeholders_and_keeps_no_mapping(tmp_path: Path) -> None:
    out = _layer(tmp_path, "redact").protect(DOC_A)
    assert "[PERSON]" in out and "[EMAIL_ADDRESS]" in out and "[IBAN_CODE]" in out and "[PHONE_NUMBER]" in out
    assert "Schneider" not in out and "example.com" not in out
    assert not (tmp_path / "run" / "privacy").exists()


@pytest.mark.parametrize(
    "text, real, entity",
    [
        (
            "Bitte überweisen Sie den Betrag auf DE89 3704 0044 0532 0130 00 bis Freitag.",
            "DE89 3704 0044 0532 0130 00",
            "IBAN_CODE",
        ),
        ("Sie erreichen mich unter 0171 2345678 oder im Büro.", "0171 2345678", "PHONE_NUMBER"),
        ("Telefon: +49 (0)89 12345678, Fax folgt.", "+49 (0)89 12345678", "PHONE_NUMBER"),
        ("Meine Steuer-ID lautet {tax} laut Bescheid.", "{tax}", "DE_TAX_ID"),
        ("Die Zahlung mit Karte 4111 1111 1111 1111 wurde abgelehnt.", "4111 1111 1111 1111", "CREDIT_CARD"),
        ("Der Server 192.168.10.24 antwortet nicht.", "192.168.10.24", "IP_ADDRESS"),
        (
            "Sein Profil: https://intranet.example.de/mitarbeiter/kmeyer",
            "https://intranet.example.de/mitarbeiter/kmeyer",
            "URL_PERSONAL",
        ),
        ("Lieferadresse ist die Goethestraße 12 in Leipzig.", "Goethestraße 12", "STREET_ADDRESS"),
        ("Frau Müller hat den Antrag unterschrieben.", "Müller", "PERSON"),
    ],
    ids=["iban", "mobile", "intl-phone", "tax-id", "card", "ip", "personal-url", "street", "titled-name"],
)
def test_pattern_types_are_found_in_german_text(tmp_path: Path, text: str, real: str, entity: str) -> None:
    tax = _tax_id()
    text, real = text.format(tax=tax), real.format(tax=tax)
    out = _layer(tmp_path, "redact").protect(text)
    assert real not in out and f"[{entity}]" in out, out


def test_a_name_found_once_is_hidden_everywhere(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    layer.learn(["Mr. Konrad Weißhaupt approved the budget."])
    out = layer.protect("Die Freigabe kam von Konrad Weißhaupt persönlich.")
    assert "Konrad Weißhaupt" not in out and "[PERSON_" in out


def test_reidentify_restores_real_values(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    protected = layer.protect(DOC_A)
    layer.flush()
    mapping = Vault.read_mapping(UPath(tmp_path / "run"))
    assert reidentify_value({"messages": [{"content": protected}]}, mapping) == {"messages": [{"content": DOC_A}]}


def _sample(text: str, sid: str = "s1") -> Sample:
    return Sample(
        id=sid,
        kind="instruction",
        instruction="Who approves refunds?",
        response=text,
        messages=[Message(role="user", content="Who approves refunds?"), Message(role="assistant", content=text)],
        provenance=Provenance(
            source_path="a.md",
            document_id="d",
            chunk_id="c",
            char_start=0,
            char_end=1,
            pages=[],
            context="",
            teacher_calls=[],
        ),
    )


def test_a_real_value_in_a_pseudonymised_sample_is_a_pii_leak(tmp_path: Path) -> None:
    cfg = PipelineConfig(sources=["x"], store=str(tmp_path), run_id="run", privacy={"mode": "pseudonymize"})
    layer = Privacy(cfg.privacy, cfg.run_dir)
    token = layer.protect("Contact anna.schneider@example.com today.").split()[1]
    layer.flush()
    clean, leaky = _sample(f"Write to {token}."), _sample("Write to anna.schneider@example.com.", "s2")
    rejects = leak_rejects(cfg, [clean, leaky])
    assert [(r.record_id, r.reason) for r in rejects] == [("s2", "pii_leak")]
    assert "EMAIL_ADDRESS" in rejects[0].detail and "anna.schneider" not in rejects[0].detail + rejects[0].payload


@pytest.mark.parametrize(
    "teacher, local_endpoints, refused",
    [
        ({"backend": "openai", "model": "m", "base_url": "https://api.example.com/v1"}, [], True),
        ({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8000/v1"}, [], False),
        ({"backend": "openai", "model": "m", "base_url": "http://localhost:8000/v1"}, [], False),
        (
            {"backend": "openai", "model": "m", "base_url": "http://gpu-box.internal:8000/v1"},
            ["gpu-box.internal"],
            False,
        ),
        ({"backend": "openai", "model": "m", "base_url": "http://10.0.0.5:8000/v1"}, ["http://10.0.0.5:8000"], False),
        ({"backend": "llamacpp"}, [], False),
    ],
    ids=["remote", "loopback", "localhost", "listed-host", "listed-url", "embedded"],
)
def test_confidential_sources_only_go_to_local_teachers(
    teacher: dict[str, str], local_endpoints: list[str], refused: bool
) -> None:
    cfg = PipelineConfig(
        sources=[{"path": "hr/*.pdf", "sensitivity": "confidential"}, "public/"],  # type: ignore[list-item]
        privacy={"local_endpoints": local_endpoints},
    )
    assert cfg.sources == ["hr/*.pdf", "public/"] and cfg.privacy.sensitivity == {"hr/*.pdf": "confidential"}
    tcfg = TeacherConfig(**teacher)
    if refused:
        with pytest.raises(ConfigError, match=r"hr/\*\.pdf.*https://api\.example\.com/v1"):
            check_routing(cfg, tcfg)
    else:
        check_routing(cfg, tcfg)
