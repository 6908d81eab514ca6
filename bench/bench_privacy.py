"""PII detection: cost against extraction on the shared corpus, and recall on a labelled Faker corpus.

1. Cost. The shared test documents (``shared/corpus/docs``, or ``examples/docs``) are extracted
   with ``datapipe.extract.extract_file`` (timed) and chunked (untimed). Then the privacy step
   ``protect_chunks`` in ``pseudonymize`` mode (Presidio analysis of every chunk, a second pass
   replacing known values, Presidio's anonymizer) runs over all chunks (timed, after a warm-up that
   loads spaCy). Both are reported as seconds per 1,000 chunks; the ratio is privacy / extraction.
2. Recall. ``tests/pii_corpus.make_corpus`` writes English and German documents with planted names,
   e-mail addresses, phone numbers, IBANs, card numbers and street addresses; every document is
   protected and each planted value that is still present verbatim counts as missed. Per type and
   language: found / planted. Person names are full "first last" names without a title; first names
   standing alone are counted separately. The patterns were tuned on these templates, so their figures
   flatter; ``name_heldout_*`` counts names in ten further sentences per language that were written
   after the tuning and never tuned on.

Run from the project root:  .venv/bin/python bench/bench_privacy.py [--n-docs N]
Last line:  RESULT bench_privacy ratio=<privacy/extraction per chunk> ...
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadcheck import load_at_start, report_load  # noqa: E402

LOAD_WARN = 2.5


HELD_OUT = {
    "en": [
        "According to the minutes, {a} presented the quarterly figures.",
        "Responsible: {a}",
        "The contact person for suppliers is {a}.",
        "{a} (sales) takes over the team in May.",
        "Yesterday {a} called about the open invoice.",
        "After talking to {a}, the contract was extended by a year.",
        "Signed: {a}, head of procurement",
        "Attendees: {a}, {b} and {c}.",
        "The award went to {a} for the migration project.",
        "Please send the draft to {a} before Friday.",
    ],
    "de": [
        "Laut Protokoll sprach {a} über die Quartalszahlen.",
        "Verantwortlich: {a}",
        "Ansprechpartnerin für Lieferanten ist {a}.",
        "{a} (Vertrieb) übernimmt ab Mai die Leitung.",
        "Gestern hat {a} wegen der offenen Rechnung angerufen.",
        "Nach Rücksprache mit {a} wurde der Vertrag verlängert.",
        "Unterschrift: {a}, Leitung Einkauf",
        "Teilnehmer: {a}, {b} und {c}.",
        "Den Preis erhielt {a} für das Migrationsprojekt.",
        "Bitte senden Sie den Entwurf bis Freitag an {a}.",
    ],
}


def docs_dir() -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "docs"
    return shared if shared.is_dir() else ROOT / "examples" / "docs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-docs", type=int, default=20, help="Faker documents per language for the recall part")
    args = ap.parse_args()

    from faker import Faker
    from upath import UPath

    from datapipe.chunk import SemanticChunker
    from datapipe.config import ChunkConfig, ExtractConfig, PrivacyConfig
    from datapipe.extract import SourceFile, extract_file
    from datapipe.privacy import Privacy, protect_chunks
    from datapipe.records import Document
    from tests.pii_corpus import make_corpus

    load_start = load_at_start()
    folder = docs_dir()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    extract_file(SourceFile(files[0]), ExtractConfig())  # warm-up: unstructured's lazy imports
    docs: list[Document] = []
    t0 = time.perf_counter()
    for p in files:
        out = extract_file(SourceFile(p), ExtractConfig())
        if isinstance(out, Document):
            docs.append(out)
    t_extract = time.perf_counter() - t0
    chunker = SemanticChunker(ChunkConfig())
    chunks = [c for d in docs for c in chunker.chunk(d)]
    chars = sum(len(c.text) for c in chunks)
    print(f"documents: {folder}: {len(docs)} of {len(files)} extracted in {t_extract:.2f}s -> {len(chunks)} chunks")

    with tempfile.TemporaryDirectory() as tmp:
        warm = Privacy(PrivacyConfig(mode="pseudonymize"), UPath(Path(tmp) / "warm"))
        warm.protect("Anna Schneider wrote to anna@example.com.")  # loads spaCy and Presidio
        layer = Privacy(PrivacyConfig(mode="pseudonymize"), UPath(Path(tmp) / "run"))
        t0 = time.perf_counter()
        protect_chunks(layer, [("all", chunks)])
        t_privacy = time.perf_counter() - t0
        print(f"privacy (pseudonymize) over {len(chunks)} chunks ({chars} chars): {t_privacy:.2f}s")
        print(f"detections: {dict(layer.counts)}")
        per_k_extract = t_extract / len(chunks) * 1000
        per_k_privacy = t_privacy / len(chunks) * 1000
        print(
            f"per 1,000 chunks: extraction {per_k_extract:.1f}s, privacy {per_k_privacy:.1f}s, "
            f"ratio privacy/extraction {per_k_privacy / per_k_extract:.2f}"
        )

        corpus = make_corpus(Path(tmp) / "pii", n_en=args.n_docs, n_de=args.n_docs, shared_people=3)
        recall: dict[str, tuple[int, int]] = {}
        for lang in ("en", "de"):
            rlayer = Privacy(PrivacyConfig(mode="pseudonymize"), UPath(Path(tmp) / f"recall-{lang}"))
            texts = {p: p.read_text(encoding="utf-8") for p in corpus.files if p.name.startswith(lang)}
            rlayer.learn(texts.values())
            protected = "\n".join(rlayer.protect(t) for t in texts.values())
            original = "\n".join(texts.values())
            for kind, values in sorted(corpus.planted.items()):
                present = [v for v in values if v in original]
                missed = [v for v in present if v in protected]
                recall[f"{kind}_{lang}"] = (len(present) - len(missed), len(present))
                if missed and kind != "first_name":
                    print(f"  missed {kind} ({lang}): {sorted(missed)[:5]}{' ...' if len(missed) > 5 else ''}")
        # held-out sentences: written after the patterns were tuned on the templates above, never tuned on
        fake = {"en": Faker("en_US"), "de": Faker("de_DE")}
        for lang, f in fake.items():
            f.seed_instance(7)
            rlayer = Privacy(PrivacyConfig(mode="pseudonymize"), UPath(Path(tmp) / f"heldout-{lang}"))
            names = [f"{f.first_name()} {f.last_name()}" for _ in range(3 * len(HELD_OUT[lang]))]
            texts = [
                t.format(a=names[3 * i], b=names[3 * i + 1], c=names[3 * i + 2]) for i, t in enumerate(HELD_OUT[lang])
            ]
            rlayer.learn(texts)
            protected = "\n".join(rlayer.protect(t) for t in texts)
            planted = [n for i, t in enumerate(texts) for n in names[3 * i : 3 * i + 3] if n in t]
            missed = [n for n in planted if n in protected]
            recall[f"name_heldout_{lang}"] = (len(planted) - len(missed), len(planted))
            print(f"  held-out {lang}: missed {missed}")
        for key, (found, n) in recall.items():
            print(f"recall {key}: {found}/{n} = {found / n:.1%}" if n else f"recall {key}: none planted")

    load_end = report_load(load_start, LOAD_WARN)
    figures = " ".join(f"recall_{k}={f / n:.3f}" for k, (f, n) in recall.items() if n)
    print(
        f"RESULT bench_privacy ratio={per_k_privacy / per_k_extract:.2f} privacy_s_per_1k_chunks={per_k_privacy:.1f} "
        f"extract_s_per_1k_chunks={per_k_extract:.1f} chunks={len(chunks)} {figures} "
        f"load={load_start:.2f}/{load_end:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
