"""The filters that need no LLM, each with real examples both ways, in English, German and French:
not_self_contained, language_mismatch, unsupported_number, unsupported_entity, the lexical ungrounded
check, refusals and verbatim copies. The labelled set in tests/cases/quality_de_fr.jsonl (written for
this test: German, French and English passages that are not in the dev set) guards against filters
built to the dev set's items."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from datapipe.config import FilterConfig
from datapipe.filter import content, filter_samples
from datapipe.records import Message, Reject, Sample
from tests.records_kit import make_sample

CASES = Path(__file__).resolve().parents[1] / "cases"

EN = (
    "Norwich City Football Club is an English professional football club based in Norwich, Norfolk. The club was "
    "founded in 1902 and has played its home games at Carrow Road since 1935. Norwich City is nicknamed the Canaries "
    "and plays in yellow and green. Its fierce rivalry with Ipswich Town is known as the East Anglian derby. In the "
    "2018-19 season the club won the Championship with 94 points, and its record attendance of 43,984 dates from "
    "March 1963."
)
DE = (
    "Der Kölner Dom ist eine römisch-katholische Kirche in Köln. Mit dem Bau wurde am 15. August 1248 begonnen, "
    "vollendet wurde er erst 1880. Die beiden Türme sind 157 Meter hoch. Jährlich besuchen etwa 6.000.000 Menschen "
    "den Dom, der seit 1996 zum Weltkulturerbe der UNESCO gehört. Dombaumeister ist heute Peter Füssenich."
)
FR = (
    "La tour Eiffel est une tour de fer puddlé de 330 mètres de hauteur située à Paris. Construite par l'entreprise "
    "de Gustave Eiffel pour l'Exposition universelle, elle a été inaugurée le 31 mars 1889. Elle accueille environ "
    "6 900 000 visiteurs par an et fut le monument le plus haut du monde jusqu'en 1930."
)


def run(q: str, a: str, context: str = EN, cfg: FilterConfig | None = None) -> Sample | Reject:
    [out] = list(filter_samples([make_sample("s", q, a, context)], cfg or FilterConfig()))
    return out


def reason(out: Sample | Reject) -> str | None:
    return out.reason if isinstance(out, Reject) else None


@pytest.mark.parametrize(
    ("q", "context"),
    [
        pytest.param("According to the passage, when was the club founded?", EN, id="en-according-to"),
        pytest.param("When was the club founded, as described ABOVE?", EN, id="en-above-caps"),
        pytest.param("What does the author say about the rivalry?", EN, id="en-author"),
        pytest.param("What Did The Author Say About The Rivalry?", EN, id="en-title-case"),
        pytest.param("Based on the information given, when was the club founded?", EN, id="en-information-given"),
        pytest.param("In this section, which colours does the club wear?", EN, id="en-this-section"),
        pytest.param("Which stadium is mentioned in the text?", EN, id="en-mentioned"),
        pytest.param("Where did he play his home games from 1935?", EN, id="en-unresolved-he"),
        pytest.param("Which team is the rival of the club described here?", EN, id="en-described-here"),
        pytest.param("Wann wurde laut dem Text mit dem Bau begonnen?", DE, id="de-laut-text"),
        pytest.param("Wie hoch sind die Türme der oben beschriebenen Kirche?", DE, id="de-oben"),
        pytest.param("Was sagt der Autor über den Dombaumeister?", DE, id="de-autor"),
        pytest.param("Wer ist Dombaumeister der in diesem Abschnitt genannten Kirche?", DE, id="de-abschnitt"),
        pytest.param("D'après le texte, quand la tour a-t-elle été inaugurée ?", FR, id="fr-d-apres"),
        pytest.param("Quelle est la hauteur du monument décrit ci-dessus ?", FR, id="fr-ci-dessus"),
        pytest.param("Selon l'auteur, combien de visiteurs accueille-t-elle ?", FR, id="fr-auteur"),
        pytest.param("Quand a-t-il été inauguré, selon ce passage ?", FR, id="fr-ce-passage"),
    ],
)
def test_questions_pointing_at_the_text_are_not_self_contained(q: str, context: str) -> None:
    out = run(q, _answer_for(context), context)
    assert reason(out) == "not_self_contained", out


def _answer_for(context: str) -> str:
    return {
        EN: "Norwich City was founded in 1902 and plays at Carrow Road.",
        DE: "Mit dem Bau des Kölner Doms wurde am 15. August 1248 begonnen.",
        FR: "La tour Eiffel a été inaugurée le 31 mars 1889.",
    }[context]


@pytest.mark.parametrize(
    ("q", "context"),
    [
        pytest.param("When was Norwich City founded, and where does it play?", EN, id="en-named"),
        pytest.param("According to the club's records, when was Norwich City founded?", EN, id="en-possessive"),
        pytest.param("In the essay 'Norwich City at 100', when was the club founded?", EN, id="en-titled-essay"),
        pytest.param("Why did Norwich City's manager say he had to sell the striker?", EN, id="en-he-after-name"),
        pytest.param("How did Norwich City fare in the context of the 1930s depression?", EN, id="en-context-of"),
        pytest.param("What did the writer Nick Hornby say about Norwich City?", EN, id="en-writer-named"),
        pytest.param("Wann wurde mit dem Bau des Kölner Doms begonnen?", DE, id="de-named"),
        pytest.param("Wie hoch sind die Türme des Kölner Doms?", DE, id="de-named-2"),
        pytest.param("Quand la tour Eiffel a-t-elle été inaugurée ?", FR, id="fr-named"),
        pytest.param("Combien de visiteurs la tour Eiffel accueille-t-elle par an ?", FR, id="fr-named-2"),
    ],
)
def test_questions_that_name_their_subject_are_kept(q: str, context: str) -> None:
    out = run(q, _answer_for(context), context)
    assert isinstance(out, Sample), out


def test_open_book_samples_may_point_at_their_context() -> None:
    """The context travels in the user turn: "the passage" is then something the trainee sees."""
    q = f"Read the passage and answer.\n\n{EN}\n\nAccording to the passage, when was the club founded?"
    s = make_sample("s", q, "Norwich City was founded in 1902.", EN)
    assert content.carries_context(s)
    [out] = list(filter_samples([s], FilterConfig()))
    assert isinstance(out, Sample)
    closed = make_sample("c", "According to the passage, when was the club founded?", "In 1902.", EN)
    assert not content.carries_context(closed)


@pytest.mark.parametrize(
    ("q", "a", "context", "expected"),
    [
        pytest.param(
            "Quand la tour Eiffel a-t-elle été inaugurée ?",
            "La tour Eiffel a été inaugurée le 31 mars 1889 pour l'Exposition universelle.",
            FR,
            None,
            id="french-source-french-sample-kept",
        ),
        pytest.param(
            "Wann wurde der Kölner Dom vollendet?", "Der Kölner Dom wurde 1880 vollendet.", DE, None, id="german-kept"
        ),
        pytest.param(
            "Where was Iwan Roberts born?",
            "Iwan Roberts was born in Bangor, Gwynedd, and grew up in Barmouth.",
            "Iwan Roberts was born in Bangor, Gwynedd, and grew up in Barmouth on the west coast of Wales.",
            None,
            id="english-with-welsh-names-kept",
        ),
        pytest.param(
            "Wann wurde der Kölner Dom vollendet?",
            "Cologne Cathedral was completed in 1880, more than six centuries later.",
            DE,
            "language_mismatch",
            id="english-answer-german-source",
        ),
        pytest.param(
            "Wann wurde Norwich City gegründet?",
            "Norwich City wurde 1902 gegründet und spielt seit 1935 an der Carrow Road.",
            EN,
            "language_mismatch",
            id="german-sample-english-source",
        ),
        pytest.param(
            "Quand la tour Eiffel a-t-elle été inaugurée ?",
            "Der Eiffelturm wurde am 31. März 1889 eingeweiht.",
            FR,
            "language_mismatch",
            id="german-answer-french-source",
        ),
    ],
)
def test_language_follows_the_source_chunk(q: str, a: str, context: str, expected: str | None) -> None:
    assert FilterConfig().languages is None  # no fixed allow-list by default
    assert reason(run(q, a, context)) == expected


def test_target_language_and_the_optional_allow_list() -> None:
    q, a = "When was Norwich City founded?", "Norwich City was founded in 1902 and plays at Carrow Road."
    assert reason(run(q, a, EN, FilterConfig(target_language="de"))) == "language_mismatch"
    assert isinstance(run(q, a, EN, FilterConfig(target_language="en")), Sample)
    fr = run("Quand la tour Eiffel a-t-elle été inaugurée ?", "Elle a été inaugurée le 31 mars 1889.", FR,
             FilterConfig(languages=["en", "de"]))  # fmt: skip
    assert reason(fr) == "wrong_language:fr"


@pytest.mark.parametrize(
    ("a", "context", "expected"),
    [
        pytest.param("Its record attendance is 43984, set in March 1963.", EN, None, id="1,000=1000"),
        pytest.param("Etwa 6 000 000 Menschen besuchen jährlich den Dom.", DE, None, id="1.000=1 000-de"),
        pytest.param("Etwa 6.000.000 Menschen besuchen jährlich den Kölner Dom.", DE, None, id="same-format-de"),
        pytest.param("Elle accueille environ 6,900,000 visiteurs par an.", FR, None, id="fr-thin-space-vs-comma"),
        pytest.param("Mit dem Bau wurde am 15.08.1248 begonnen.", DE, None, id="numeric-date-de"),
        pytest.param("The club was founded in 1902 and won the 2018-19 Championship.", EN, None, id="season"),
        pytest.param("Norwich City's record attendance, 43,984, dates from 1963-03.", EN, None, id="year-in-iso"),
        pytest.param("La tour Eiffel a été inaugurée le 31 mars 1889.", FR, None, id="date-fr"),
        pytest.param("Its record attendance of 43,948 dates from March 1963.", EN, "unsupported_number", id="digits"),
        pytest.param("Norwich City won the Championship with 97 points.", EN, "unsupported_number", id="points"),
        pytest.param("Mit dem Bau wurde am 15. August 1284 begonnen.", DE, "unsupported_number", id="year-de"),
        pytest.param("Mit dem Bau wurde am 25. August 1248 begonnen.", DE, "unsupported_number", id="day-de"),
        pytest.param("La tour Eiffel a été inaugurée le 31 mai 1889.", FR, "unsupported_number", id="month-fr"),
        pytest.param("Die beiden Türme sind 175 Meter hoch.", DE, "unsupported_number", id="height-de"),
        pytest.param(
            "The club plays in yellow and green and has three nicknames.", EN, "unsupported_number", id="number-word"
        ),  # fmt: skip
        pytest.param(
            "It was the fourth club in Norfolk to turn professional.", EN, "unsupported_number", id="ordinal"
        ),  # fmt: skip
    ],
)
def test_numbers_and_dates_must_be_in_the_context(a: str, context: str, expected: str | None) -> None:
    q = {
        EN: "Tell me about Norwich City.",
        DE: "Was weiß man über den Kölner Dom?",
        FR: "Que sait-on de la tour Eiffel ?",
    }
    assert reason(run(q[context], a, context)) == expected


@pytest.mark.parametrize(
    ("a", "context", "expected"),
    [
        pytest.param("Norwich City's rivals are Ipswich Town, in the East Anglian derby.", EN, None, id="kept-en"),
        pytest.param("Der heutige Dombaumeister des Kölner Doms ist Peter Füssenich.", DE, None, id="kept-de-nouns"),
        pytest.param("Elle a été construite par l'entreprise de Gustave Eiffel.", FR, None, id="kept-fr"),
        pytest.param(
            "Norwich City's rivals are Colchester United, in the derby.", EN, "unsupported_entity", id="changed-club"
        ),  # fmt: skip
        pytest.param(
            "Der heutige Dombaumeister des Kölner Doms ist Barbara Schock-Werner.",
            DE,
            "unsupported_entity",
            id="changed-person-de",
        ),  # fmt: skip
        pytest.param(
            "Elle a été construite par l'entreprise de Gustave Eiffel et Maurice Koechlin.",
            FR,
            "unsupported_entity",
            id="added-person-fr",
        ),  # fmt: skip
    ],
)
def test_names_must_be_in_the_context(a: str, context: str, expected: str | None) -> None:
    q = {EN: "Who are Norwich City's rivals?", DE: "Wer ist Dombaumeister des Kölner Doms?",
         FR: "Qui a construit la tour Eiffel ?"}  # fmt: skip
    assert reason(run(q[context], a, context)) == expected


def test_a_first_name_the_chunk_leaves_out_is_not_an_invention() -> None:
    ctx = "Roberts signed a new contract in January. Shortly afterwards Bruce Rioch was succeeded by Bryan Hamilton."
    answer = "Bruce Rioch was succeeded by Bryan Hamilton, soon after Iwan Roberts signed."
    out = run("Who succeeded Bruce Rioch?", answer, ctx)
    assert isinstance(out, Sample), out


@pytest.mark.parametrize(
    ("a", "expected"),
    [
        pytest.param("Norwich City plays its home games at Carrow Road, in yellow and green.", None, id="grounded"),
        pytest.param(
            "Norwich City plays at Carrow Road, a stadium it bought from the city council in 1935.",
            "ungrounded",
            id="invented-purchase",
        ),
        pytest.param(
            "Norwich City plays at Carrow Road, which has a retractable roof and heated seats.",
            "ungrounded",
            id="invented-features",
        ),
    ],
)
def test_answers_with_content_from_nowhere_are_ungrounded(a: str, expected: str | None) -> None:
    assert reason(run("Where does Norwich City play its home games?", a)) == expected


@pytest.mark.parametrize(
    ("a", "expected"),
    [
        pytest.param("The text does not mention when the club was founded.", "refusal", id="en-text-does-not"),
        pytest.param("The founding year is not specified in the provided context.", "refusal", id="en-not-specified"),
        pytest.param("There is no information about the founding of the club.", "refusal", id="en-no-information"),
        pytest.param("I'm unable to determine the year from the information given.", "refusal", id="en-unable"),
        pytest.param("Das Gründungsjahr wird im Text nicht erwähnt.", "refusal", id="de-nicht-erwaehnt"),
        pytest.param("Der Abschnitt enthält keine Angaben zum Gründungsjahr.", "refusal", id="de-keine-angaben"),
        pytest.param("Le texte ne précise pas l'année de fondation du club.", "refusal", id="fr-ne-precise-pas"),
        pytest.param("L'année de fondation n'est pas mentionnée.", "refusal", id="fr-pas-mentionnee"),
        pytest.param("Norwich City was founded in 1902, in Norwich.", None, id="answer"),
        pytest.param("Norwich City was not founded before 1902; it was founded in 1902.", None, id="answer-with-not"),
        pytest.param("Unfortunately, the club was relegated after it was founded in 1902.", None, id="unfortunately"),
        pytest.param(
            "Its first manager was not given a contract when the club was founded in 1902.",
            None,
            id="not-given-a-contract",
        ),  # fmt: skip
        pytest.param("Leider wurde der Verein erst 1902 gegründet.", None, id="leider"),
    ],
)
def test_refusals_and_non_answers(a: str, expected: str | None) -> None:
    if expected is None:  # answers that use "not", "unfortunately", "leider": other checks may judge them
        assert content.refusal(a) is None
        return
    out = run("When was Norwich City founded?", a, EN, FilterConfig(language_match=False))
    assert reason(out) == expected


def test_copies_of_a_long_span_of_the_context() -> None:
    span = " ".join(EN.split()[:45])
    copied = run("What is Norwich City?", span)
    assert reason(copied) == "copies_context" and "verbatim" in copied.detail  # type: ignore[union-attr]
    quoted = run("When was Norwich City founded?", "The club was founded in 1902 and has played its home games at "
                 "Carrow Road since 1935.")  # fmt: skip
    assert isinstance(quoted, Sample)  # one quoted sentence is an answer, not a copy


def test_multi_turn_samples_check_every_user_turn() -> None:
    s = make_sample("m", "When was Norwich City founded?", "Norwich City plays at Carrow Road.", EN)
    s.messages = [
        Message(role="user", content="When was Norwich City founded?"),
        Message(role="assistant", content="Norwich City was founded in 1902."),
        Message(role="user", content="And where does he play, according to the passage?"),
        Message(role="assistant", content="Norwich City plays at Carrow Road."),
    ]
    [out] = list(filter_samples([s], FilterConfig()))
    assert reason(out) == "not_self_contained"


def test_second_labelled_set_in_german_french_and_english() -> None:
    """Passages and phrasings not in the dev set; per label: caught defects, and good samples kept.
    Inverted relations ("schwer verletzt" for "fast unverletzt") are beyond the checks without an LLM:
    that is why ungrounded has a lower bar."""
    items = [json.loads(line) for line in (CASES / "quality_de_fr.jsonl").read_text(encoding="utf-8").splitlines()]
    samples = [make_sample(it["id"], it["question"], it["answer"], it["context"]) for it in items]
    out = {o.record_id if isinstance(o, Reject) else o.id: o for o in filter_samples(samples, FilterConfig())}
    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for it in items:
        total[it["label"]] += 1
        caught[it["label"]] += isinstance(out[it["id"]], Reject)
    lost = [it["id"] for it in items if it["label"] == "good" and isinstance(out[it["id"]], Reject)]
    assert caught["good"] == 0, lost
    for label in ("deictic", "wrong_language", "copies_context", "refusal"):
        assert caught[label] == total[label], label
    assert caught["ungrounded"] / total["ungrounded"] >= 0.7
