"""Synthetic clinical notes with planted identifiers and their ground-truth spans.

Each note embeds one ICD-10-CM leaf description (its label is the description's chapter, as
in the demo corpus) in a note template, with identifiers from `faker`: person names (several
locales: English-speaking and continental European, Indian English, in "First Last",
"First M. Last" and "Last, First" forms), dates in nine formats, phone numbers (US, UK and
continental formats, some with extensions), record numbers (digits, letter prefixes, SSN-like),
e-mail addresses, US street addresses (some with city, state and ZIP) and URLs. Nothing here
is real: the notes exist to measure a de-identification pass (benchmarks/deid_eval.py) and to
test it (tests/test_deidentification.py).

`score(notes, found)` compares detected spans with the planted ones: a planted span counts as
removed only when every letter and digit of it lies inside a detected span (a phone number
whose extension survives is a miss); a detected span is correct when it overlaps a planted one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from common.data.phi_span import Span

PLANTED_TYPES = ("NAME", "DATE", "PHONE", "ID", "EMAIL", "ADDRESS", "URL")
STRUCTURED_TYPES = ("DATE", "PHONE", "ID", "EMAIL", "URL")  # the goal: recall >= 0.98
# Name locales and their weights (faker locale -> share of planted names).
NAME_LOCALES = {"en_US": 0.55, "en_GB": 0.15, "es_ES": 0.06, "de_DE": 0.06, "fr_FR": 0.06,
                "it_IT": 0.06, "en_IN": 0.06}
PHONE_LOCALES = {"en_US": 0.7, "en_GB": 0.15, "de_DE": 0.05, "fr_FR": 0.05, "es_ES": 0.05}
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%m/%d/%y",
                "%d.%m.%Y", "%m-%d-%Y", "%b %d %Y")
ID_CUES = ("MRN", "MRN:", "MRN #", "Medical record #", "Patient ID", "Acct", "Record no.",
           "Chart #", "ID")
TEMPLATES = (
    "{name} ({cue} {id}) was seen on {date} for {dx}. Follow-up call to {phone}.",
    ("Discharge summary for {name}, DOB {date}. Diagnosis: {dx}. Address: {address}. "
     "Contact: {email}."),
    "Pt {name} presented {date} with {dx}. Records at {url}. Phone {phone}.",
    "Referred by Dr. {name} on {date}; {dx}. {cue} {id}. Patient lives at {address}.",
    "{dx} diagnosed in {name}. Seen {date}, reviewed {date}. Email {email}, tel {phone}.",
    "Assessment: {dx}. Spoke with the patient's daughter {name} at {phone} on {date}.",
    "Note {date}: {name} reports symptoms consistent with {dx}. Portal: {url}. {cue} {id}.",
    "{name} - {dx}. Next visit {date}. Home: {address}. {email}",
    "Problem list: {dx}. Emergency contact {name}, {phone}. Insurance {cue} {id}.",
    "Telehealth visit {date} with {name} ({email}); {dx}; results uploaded to {url}",
    "History of {dx}. Lives at {address} with spouse {name}. Last seen {date}.",
    "Admitted {date}. {cue}: {id}. Attending: Dr. {name}. Working diagnosis {dx}.",
)


@dataclass(frozen=True)
class PlantedSpan:
    start: int
    end: int
    phi_type: str
    source: str  # the faker locale or format it came from (for per-source recall)


@dataclass(frozen=True)
class PlantedNote:
    text: str
    label: int
    spans: tuple[PlantedSpan, ...]


def planted_notes(count: int, seed: int = 0) -> tuple[list[PlantedNote], list[str]]:
    """`count` notes (seeded) and the label names (ICD-10-CM chapters)."""
    from faker import Faker

    from common.data.icd10_corpus import load_icd10_records

    records = load_icd10_records()
    rng = random.Random(seed)
    # sorted: a set's order changes between processes (string hashing), the seeds must not
    fakers = {loc: Faker(loc) for loc in sorted({*NAME_LOCALES, *PHONE_LOCALES})}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed * 1009 + i)
    us = fakers["en_US"]
    picks = rng.sample(range(len(records.texts)), count)
    notes = []
    for n, index in enumerate(picks):
        template = TEMPLATES[n % len(TEMPLATES)]
        values = {
            "name": lambda: _name(rng, fakers),
            "date": lambda: _date(rng, us),
            "phone": lambda: _weighted(rng, PHONE_LOCALES, fakers, lambda f: f.phone_number()),
            "id": lambda: _record_number(rng, us),
            "email": lambda: (rng.choice((us.email, us.free_email, us.company_email))(), "en_US"),
            "address": lambda: _address(rng, us),
            "url": lambda: (rng.choice((us.url, us.uri))(), "en_US"),
        }
        notes.append(_fill(template, records.texts[index], records.labels[index],
                           rng.choice(ID_CUES), values))
    return notes, records.label_names


def _fill(template: str, dx: str, label: int, cue: str, values) -> PlantedNote:
    text, spans, rest = "", [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        text += head
        if slot == "dx":
            text += dx
        elif slot == "cue":
            text += cue
        else:
            value, source = values[slot]()
            spans.append(PlantedSpan(len(text), len(text) + len(value), slot.upper()
                                     if slot != "id" else "ID", source))
            text += value
    return PlantedNote(text + rest, int(label), tuple(spans))


def _weighted(rng: random.Random, weights: dict[str, float], fakers, make):
    locale = rng.choices(list(weights), weights=list(weights.values()))[0]
    return make(fakers[locale]), locale


def _name(rng: random.Random, fakers) -> tuple[str, str]:
    locale = rng.choices(list(NAME_LOCALES), weights=list(NAME_LOCALES.values()))[0]
    fake = fakers[locale]
    first, last = fake.first_name(), fake.last_name()
    form = rng.random()
    if form < 0.6:
        return f"{first} {last}", locale
    if form < 0.8:
        return f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}", locale
    return f"{last}, {first}", locale


def _date(rng: random.Random, fake) -> tuple[str, str]:
    fmt = rng.choice(DATE_FORMATS)
    return fake.date_between("-90y", "today").strftime(fmt), fmt


def _record_number(rng: random.Random, fake) -> tuple[str, str]:
    kind = rng.choice(("digits", "prefixed", "ssn", "dashed"))
    if kind == "digits":
        return fake.numerify("#" * rng.randint(6, 10)), kind
    if kind == "prefixed":
        return fake.bothify(rng.choice(("??######", "?#######", "??-#######"))).upper(), kind
    if kind == "ssn":
        return fake.ssn(), kind
    return fake.numerify("###-###-###"), kind


def _address(rng: random.Random, fake) -> tuple[str, str]:
    street = fake.street_address()
    if rng.random() < 0.4:
        return f"{street}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}", "full"
    return street, "street"


@dataclass(frozen=True)
class Scores:
    """Recall per planted type (and per source), precision per detected type and overall."""

    planted: dict[str, int]
    removed: dict[str, int]
    by_source: dict[str, tuple[int, int]]  # "TYPE/source" -> (removed, planted)
    detected: dict[str, int]
    correct: dict[str, int]

    def recall(self, phi_type: str) -> float:
        return self.removed.get(phi_type, 0) / max(self.planted.get(phi_type, 0), 1)

    def precision(self, phi_type: str | None = None) -> float:
        if phi_type is None:
            return sum(self.correct.values()) / max(sum(self.detected.values()), 1)
        return self.correct.get(phi_type, 0) / max(self.detected.get(phi_type, 0), 1)

    def structured_recall(self) -> float:
        return (sum(self.removed.get(t, 0) for t in STRUCTURED_TYPES)
                / max(sum(self.planted.get(t, 0) for t in STRUCTURED_TYPES), 1))


def score(notes: Sequence[PlantedNote], found: Sequence[Sequence[Span]]) -> Scores:
    """Compare detected spans (per note) with the planted ones (see the module doc)."""
    planted, removed, detected, correct = Counter(), Counter(), Counter(), Counter()
    source_planted, source_removed = Counter(), Counter()
    for note, spans in zip(notes, found, strict=True):
        covered = set()
        for span in spans:
            covered.update(range(span.start, span.end))
            detected[span.phi_type] += 1
            correct[span.phi_type] += any(p.start < span.end and span.start < p.end
                                          for p in note.spans)
        for p in note.spans:
            key = f"{p.phi_type}/{p.source}"
            planted[p.phi_type] += 1
            source_planted[key] += 1
            hit = all(i in covered for i in range(p.start, p.end) if note.text[i].isalnum())
            removed[p.phi_type] += hit
            source_removed[key] += hit
    return Scores(dict(planted), dict(removed),
                  {k: (source_removed[k], v) for k, v in sorted(source_planted.items())},
                  dict(detected), dict(correct))


def write_planted_folder(notes: Sequence[PlantedNote], label_names: Sequence[str],
                         folder) -> None:
    """The notes as a data folder (`notes.jsonl`: text and label, the chapter's name) for
    `fedssl check-data` and `fedssl simulate --set data=DIR`."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "notes.jsonl", "w") as handle:
        handle.writelines(json.dumps({"text": note.text, "label": label_names[note.label]})
                          + "\n" for note in notes)
