"""A labelled PII corpus made with Faker: English and German documents with planted personal data.

Each document is Markdown prose in which names, e-mail addresses, phone numbers, IBANs, card
numbers and street addresses are planted; ``planted`` lists every value by type, so a test or a
bench can check exactly which of them got through. Seeded: the same arguments give the same corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker

EN = [
    "# Account review {n}\n\n"
    "{name} joined the support team in {year} and handles escalations for enterprise customers. "
    "Customers reach {first} by e-mail at {email} or by phone on {phone}. "
    "When a refund is approved, {name} transfers it to the customer's account {iban} within five working days. "
    "The corporate card ending the quarter was {card}, registered to {name}.\n\n"
    "Visitors should go to the office at {street}, {city}. "
    "{other} reviewed the case notes with {name} and agreed that the escalation policy needs a second approver. "
    "{other} can be reached at {email2}.\n",
    "# Project note {n}\n\n"
    "The migration of the billing database was led by {name}, with help from {other}. "
    "Questions about the schedule go to {email}; urgent issues to {phone}. "
    "Invoices for the consultants are paid to {iban}. "
    "{other} explained that the old servers in the {city} data centre at {street} will be switched off in spring. "
    "For travel expenses {name} used the card {card}. "
    "{first} also wrote the runbook that the operations team now follows for every release.\n",
]
DE = [
    "# Mitarbeitergespräch {n}\n\n"
    "{name} arbeitet seit {year} in der Buchhaltung und betreut die Lieferantenrechnungen. "
    "Erreichbar ist {first} unter {email} oder telefonisch unter {phone}. "
    "Erstattungen werden auf das Konto {iban} überwiesen, in der Regel innerhalb von fünf Werktagen. "
    "Die Firmenkreditkarte {card} ist auf {name} ausgestellt.\n\n"
    "Das Büro befindet sich in der {street} in {city}. "
    "{other} hat die Unterlagen gemeinsam mit {name} geprüft und empfiehlt ein Vier-Augen-Prinzip für Zahlungen. "
    "{other} ist per E-Mail unter {email2} erreichbar.\n",
    "# Projektbericht {n}\n\n"
    "Die Umstellung der Lohnabrechnung wurde von {name} geleitet, unterstützt von {other}. "
    "Fragen zum Zeitplan bitte an {email}, dringende Anliegen an {phone}. "
    "Die Rechnungen der Berater werden auf {iban} gezahlt. "
    "{other} erklärte, dass die alten Server im Rechenzentrum {city} in der {street} im Frühjahr abgeschaltet werden. "
    "Für Reisekosten nutzte {name} die Karte {card}. "
    "{first} hat außerdem das Betriebshandbuch geschrieben, nach dem das Team jede Auslieferung durchführt.\n",
]


@dataclass
class PiiCorpus:
    files: list[Path] = field(default_factory=list)
    planted: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, value: str) -> str:
        self.planted.setdefault(kind, set()).add(value)
        return value


def make_corpus(folder: Path, n_en: int = 3, n_de: int = 3, seed: int = 19, shared_people: int = 2) -> PiiCorpus:
    """Write ``n_en`` English and ``n_de`` German documents into ``folder``. The first ``shared_people`` names
    of each language recur in several documents (to test that a person keeps one pseudonym)."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = PiiCorpus()
    for lang, n, templates in (("en_US", n_en, EN), ("de_DE", n_de, DE)):
        fake = Faker(lang)
        fake.seed_instance(seed)
        people = [(fake.first_name(), fake.last_name()) for _ in range(shared_people)]
        for i in range(n):
            first, last = people[i % len(people)] if i < 2 * len(people) else (fake.first_name(), fake.last_name())
            o_first, o_last = fake.first_name(), fake.last_name()
            values = {
                "name": f"{first} {last}",
                "other": f"{o_first} {o_last}",
                "email": fake.email(),
                "email2": fake.email(),
                "phone": fake.phone_number(),
                "iban": fake.iban(),
                "card": fake.credit_card_number(card_type="visa16"),
                "street": fake.street_address(),
            }
            text = templates[i % len(templates)].format(
                n=i + 1, first=first, year=fake.year(), city=fake.city(), **values
            )
            kinds = {"name": "name", "other": "name", "email": "email", "email2": "email", "phone": "phone"}
            kinds |= {"iban": "iban", "card": "card", "street": "address"}
            for key, value in values.items():
                if value in text:  # a template may not use every value: only what is in the text is planted
                    corpus.add(kinds[key], value)
            if first in text:
                corpus.add("first_name", first)
            path = folder / f"{lang[:2]}-{i + 1}.md"
            path.write_text(text, encoding="utf-8")
            corpus.files.append(path)
    return corpus
