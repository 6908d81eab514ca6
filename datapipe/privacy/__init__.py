"""Privacy between the run store and the Teacher: pseudonymise or redact PII, route sensitive sources, audit.

* ``pseudonymize``: each detected value becomes a placeholder ``[PERSON_1a2b3c4d]`` derived from the
  value and a secret salt kept in the run store, so the same person is the same placeholder in every
  chunk, document, prompt and re-run (the response cache and sample ids stay deterministic). The
  mapping placeholder -> value lives only in ``<run>/privacy/`` (mode 0600), for
  ``datapipe export --reidentify``.
* ``redact``: each value becomes ``[PERSON]``, ``[EMAIL_ADDRESS]``, ...; no mapping is kept.

Values found anywhere in the run are also replaced wherever they occur verbatim, so a name the NER
model finds in one chunk is hidden in every chunk. Stored chunks keep their original text; the
generators see pseudonymised chunks, so samples hold pseudonymised text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from upath import UPath

from datapipe.config import PipelineConfig, PrivacyConfig, TeacherConfig
from datapipe.errors import ConfigError
from datapipe.privacy.detect import PLACEHOLDER, Finding, detect

_TOKEN = re.compile(r"\[([A-Z_]+)_([0-9a-f]{8})\]")


def _private_write(path: UPath, text: str) -> None:
    """Write ``text`` readable by the owner only (0600 on a local disk; an object store has its own ACLs)."""
    from datapipe.fsio import is_local
    from datapipe.fsio import local as local_path

    if is_local(path):
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(p.parent, 0o700)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


class Vault:
    """The run's secret salt and placeholder -> value mapping, under ``<run>/privacy/``.

    Each writer (process) keeps its own mapping file, so stage parts on several machines never
    overwrite each other; reading merges them all.
    """

    def __init__(self, run_dir: UPath) -> None:
        self.dir = run_dir / "privacy"
        self._file = self.dir / f"mapping-{uuid.uuid4().hex[:12]}.json"
        self._lock = threading.Lock()
        self.salt = self._salt()
        self.mapping: dict[str, dict[str, str]] = self.read_mapping(run_dir)
        self._mine: dict[str, dict[str, str]] = {}

    def _salt(self) -> bytes:
        path = self.dir / "salt"
        if not path.exists():
            _private_write(path, secrets.token_hex(32))
        return path.read_text(encoding="utf-8").strip().encode()

    @staticmethod
    def read_mapping(run_dir: UPath) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        folder = run_dir / "privacy"
        if folder.exists():
            for f in sorted(folder.glob("mapping-*.json")):
                out.update(json.loads(f.read_text(encoding="utf-8")))
        return out

    def placeholder(self, entity: str, value: str) -> str:
        digest = hashlib.sha256(self.salt + f"\x00{entity}\x00{value}".encode()).hexdigest()[:8]
        token = f"[{entity}_{digest}]"
        with self._lock:
            if token not in self.mapping:
                self.mapping[token] = self._mine[token] = {"entity": entity, "value": value}
        return token

    def flush(self) -> None:
        with self._lock:
            if self._mine:
                _private_write(self._file, json.dumps(self._mine, ensure_ascii=False, sort_keys=True))


class Privacy:
    """The run's privacy layer: ``protect(text)`` gives the text a teacher may see."""

    def __init__(self, cfg: PrivacyConfig, run_dir: UPath) -> None:
        self.cfg = cfg
        self.vault = Vault(run_dir) if cfg.mode == "pseudonymize" else None
        self.counts: Counter[str] = Counter()
        self.known: dict[str, str] = {}  # real value -> entity, learned from every text analysed
        self._memo: dict[str, str] = {}
        self._known_re: re.Pattern[str] | None = None

    def _findings(self, text: str) -> list[Finding]:
        return detect(text, list(self.cfg.entities), self.cfg.score_threshold)

    def learn(self, texts: Iterable[str]) -> None:
        """Analyse texts up front (e.g. every chunk of the run): the values found are replaced wherever
        they occur, whatever order the texts are later sent in."""
        for t in texts:
            for f in self._findings(t):
                self._learn(f.entity, f.text)
        self._known_re = None
        self._memo.clear()

    def _learn(self, entity: str, value: str) -> None:
        """Remember a value to replace wherever it occurs. A one-word "person" from the NER model is often a
        capitalised German noun, so only names of two or more words are learned (with their surname)."""
        parts = value.split()
        if entity != "PERSON":
            self.known.setdefault(value, entity)
        elif len(parts) > 1:
            self.known.setdefault(value, entity)
            if len(parts[-1]) >= 4:
                self.known.setdefault(parts[-1], entity)  # "Frau Weber" after "Anna Weber"

    def _known_pattern(self) -> re.Pattern[str] | None:
        if self._known_re is None and self.known:
            values = sorted(self.known, key=len, reverse=True)
            self._known_re = re.compile(r"(?<![\w@.])(?:" + "|".join(map(re.escape, values)) + r")(?![\w@])")
        return self._known_re

    def _replacement(self, entity: str, value: str) -> str:
        if self.vault is None:
            return f"[{entity}]"
        return self.vault.placeholder(entity, value)

    def protect(self, text: str) -> str:
        """``text`` with every detected or already known value replaced (pseudonym or typed placeholder)."""
        if self.cfg.mode == "off" or not text:
            return text
        if (hit := self._memo.get(text)) is not None:
            return hit
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

        findings = self._findings(text)
        for f in findings:
            self._learn(f.entity, f.text)
        spans = [(f.start, f.end, f.entity) for f in findings]
        if (pat := self._known_pattern()) is not None:
            for m in pat.finditer(text):
                if not any(s < m.end() and m.start() < e for s, e, _ in spans) and not _in_placeholder(text, m):
                    spans.append((m.start(), m.end(), self.known[m.group(0)]))
        for _, _, entity in spans:
            self.counts[entity] += 1
        results = [RecognizerResult(entity_type=e, start=s, end=t, score=1.0) for s, t, e in spans]
        operators = {
            e: OperatorConfig("custom", {"lambda": lambda v, e=e: self._replacement(e, v)}) for _, _, e in spans
        }
        out = (
            _anonymizer().anonymize(text, results, operators, merge_entities_with_spaces=False).text if spans else text
        )
        if len(self._memo) < 50_000:
            self._memo[text] = out
        return out

    def protect_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": self.protect(m.get("content") or "")} for m in messages]

    def flush(self) -> None:
        if self.vault is not None:
            self.vault.flush()

    def summary(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "detections": dict(sorted(self.counts.items()))}


_ANONYMIZER: list[Any] = []


def _anonymizer() -> Any:
    """Presidio's AnonymizerEngine (one per process)."""
    if not _ANONYMIZER:
        from presidio_anonymizer import AnonymizerEngine

        _ANONYMIZER.append(AnonymizerEngine())
    return _ANONYMIZER[0]


def _in_placeholder(text: str, m: re.Match[str]) -> bool:
    return any(p.start() <= m.start() and m.end() <= p.end() for p in PLACEHOLDER.finditer(text))


_LAYERS: dict[str, Privacy] = {}
_LAYERS_LOCK = threading.Lock()


def privacy_for(cfg: PipelineConfig) -> Privacy | None:
    """The run's privacy layer in this process (one per run, shared by every teacher), or None when off."""
    if cfg.privacy.mode == "off":
        return None
    key = f"{cfg.run_dir}|{cfg.privacy.model_dump_json()}"
    with _LAYERS_LOCK:
        if key not in _LAYERS:
            _LAYERS[key] = Privacy(cfg.privacy, cfg.run_dir)
        return _LAYERS[key]


class PrivateTeacher:
    """A Teacher whose every request passes through the privacy layer first; everything else is the Teacher's.

    Wrapping the teacher (rather than each stage) means chunks, taxonomy seed examples, judge prompts and
    preference prompts are all covered by one path.
    """

    def __init__(self, teacher: Any, privacy: Privacy) -> None:
        self._teacher = teacher
        self.privacy = privacy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_teacher":
            raise AttributeError(name)
        return getattr(self._teacher, name)

    def session(self) -> AbstractAsyncContextManager[Any]:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def wrapped() -> Any:
            try:
                async with self._teacher.session():
                    yield self
            finally:
                self.privacy.flush()

        return wrapped()

    async def complete(self, messages: list[dict[str, str]], params: Any) -> Any:
        return await self._teacher.complete(self.privacy.protect_messages(messages), params)


_LOOPBACK = re.compile(r"^(localhost|127(?:\.\d{1,3}){3}|\[?::1\]?)$", re.IGNORECASE)


def teacher_endpoints(tcfg: TeacherConfig) -> list[str]:
    """Where a teacher sends text: base URLs, or ``embedded`` for the in-process model."""
    if tcfg.backend == "llamacpp":
        return []
    urls = [e.base_url for e in tcfg.endpoints] or [tcfg.base_url or "https://api.openai.com/v1"]
    return urls


def is_local(url: str, local_endpoints: Iterable[str]) -> bool:
    """Loopback, or listed in ``privacy.local_endpoints`` (a URL prefix or a host name)."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if _LOOPBACK.match(host):
        return True
    for entry in local_endpoints:
        if url.rstrip("/").startswith(entry.rstrip("/")) or host == entry:
            return True
    return False


def check_routing(cfg: PipelineConfig, tcfg: TeacherConfig) -> None:
    """Refuse a non-local teacher when any source is confidential, before any request is made."""
    confidential = [p for p, level in cfg.privacy.sensitivity.items() if level == "confidential"]
    if not confidential:
        return
    remote = [u for u in teacher_endpoints(tcfg) if not is_local(u, cfg.privacy.local_endpoints)]
    if remote:
        raise ConfigError(
            f"source {confidential[0]!r} is confidential but the teacher endpoint {remote[0]} is not local; "
            f"use the embedded teacher or a server on 127.0.0.1, list the endpoint in privacy.local_endpoints "
            f"if it runs inside your network, or lower the source's sensitivity"
        )


def wrap_teacher(cfg: PipelineConfig, teacher: Any, tcfg: TeacherConfig) -> Any:
    """The run's teacher behind the privacy layer (routing checked first)."""
    check_routing(cfg, tcfg)
    layer = privacy_for(cfg)
    return PrivateTeacher(teacher, layer) if layer is not None else teacher


def reidentify_value(obj: Any, mapping: dict[str, dict[str, str]]) -> Any:
    """``obj`` (str, or lists/dicts of them) with every pseudonym replaced by its real value."""
    if isinstance(obj, str):
        return _TOKEN.sub(lambda m: mapping.get(m.group(0), {}).get("value", m.group(0)), obj)
    if isinstance(obj, list):
        return [reidentify_value(x, mapping) for x in obj]
    if isinstance(obj, dict):
        return {k: reidentify_value(v, mapping) for k, v in obj.items()}
    return obj


def audited(entity: str, value: str) -> bool:
    """Whether the audit looks for ``value``: the values :meth:`Privacy._learn` replaces wherever they occur.
    A one-word "person" is left out there and here: from the English NER on German text it is mostly a
    capitalised noun ("Regel", "Buchhaltung"), and searching samples for it would reject them for nothing."""
    return len(value) >= 3 and (entity != "PERSON" or len(value.split()) > 1)


def leak_pattern(mapping: dict[str, dict[str, str]]) -> re.Pattern[str] | None:
    """A regex matching any real value the run pseudonymised (whole words only), as far as it is audited."""
    values = sorted({v["value"] for v in mapping.values() if audited(v["entity"], v["value"])}, key=len, reverse=True)
    if not values:
        return None
    return re.compile(r"(?<![\w@.])(?:" + "|".join(map(re.escape, values)) + r")(?![\w@])")


def value_types(mapping: dict[str, dict[str, str]]) -> dict[str, str]:
    return {v["value"]: v["entity"] for v in mapping.values()}


def protect_chunks(privacy: Privacy, shards: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """Chunk shards as a teacher may see them: every chunk's text and heading protected (ids unchanged).
    All chunks are analysed first, so a value found in any of them is hidden in all."""
    privacy.learn(c.text for _, cs in shards for c in cs)

    def one(c: Any) -> Any:
        heading = privacy.protect(c.heading) if c.heading else c.heading
        title = privacy.protect(c.document_title) if c.document_title else c.document_title
        path = [privacy.protect(h) for h in c.heading_path]  # the title and headings reach the prompts too
        update = {"text": privacy.protect(c.text), "heading": heading, "document_title": title, "heading_path": path}
        return c.model_copy(update=update)

    out = [(k, [one(c) for c in cs]) for k, cs in shards]
    privacy.flush()
    return out


def sample_texts(sample: Any) -> list[str]:
    """The texts of a sample that reach a dataset: instruction, response, messages and its context."""
    return [
        sample.instruction,
        sample.response,
        *(m.content for m in sample.messages),
        sample.provenance.context or "",
        sample.provenance.heading or "",
        *sample.provenance.heading_path,
    ]


def leak_rejects(cfg: PipelineConfig, samples: list[Any]) -> list[Any]:
    """Samples in which a real value the run pseudonymised appears: rejects ``pii_leak`` (the detail names
    the entity type, never the value)."""
    from datapipe.filter import sample_reject

    mapping = Vault.read_mapping(cfg.run_dir)
    pat = leak_pattern(mapping)
    if pat is None:
        return []
    types = value_types(mapping)
    out = []
    for s in samples:
        found = Counter(types[m.group(0)] for t in sample_texts(s) for m in pat.finditer(t))
        if found:
            detail = "real values in a pseudonymised sample: " + ", ".join(f"{n} {e}" for e, n in sorted(found.items()))
            payload = json.dumps({"id": s.id, "chunk_id": s.provenance.chunk_id})  # never the real values
            out.append(sample_reject(s, "pii_leak", detail, payload))
    return out


def audit_rows(rows: Iterable[Any], mapping: dict[str, dict[str, str]]) -> dict[str, int]:
    """Real values found in exported rows (any nesting of str/list/dict), counted per entity type."""
    pat = leak_pattern(mapping)
    if pat is None:
        return {}
    types = value_types(mapping)
    found: Counter[str] = Counter()

    def walk(x: Any) -> None:
        if isinstance(x, str):
            found.update(types[m.group(0)] for m in pat.finditer(x))
        elif isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    for r in rows:
        walk(r)
    return dict(sorted(found.items()))


def reidentify_files(files: dict[str, Any], run_dir: UPath, out_dir: UPath) -> dict[str, str]:
    """Copies of exported parquet files with every pseudonym replaced by its real value, in ``out_dir``
    (owner-only on a local disk). For internal use: the copies hold the personal data the export hides."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datapipe.fsio import is_local
    from datapipe.fsio import local as local_path

    mapping = Vault.read_mapping(run_dir)
    if not mapping:
        raise ConfigError(
            f"no pseudonym mapping in {run_dir / 'privacy'}: --reidentify needs a run generated with "
            f"privacy.mode: pseudonymize (redact keeps no mapping)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_local(out_dir):
        os.chmod(local_path(out_dir), 0o700)
    written = {}
    for split, path in files.items():
        with path.open("rb") as fh:
            table = pq.read_table(fh)
        rows = reidentify_value(table.to_pylist(), mapping)
        dest = out_dir / UPath(str(path)).name
        with dest.open("wb") as fh:
            pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), fh)
        if is_local(dest):
            os.chmod(local_path(dest), 0o600)
        written[split] = str(dest)
    return written
