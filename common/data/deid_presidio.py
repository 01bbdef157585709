"""The `presidio` de-identification engine (common/data/deidentification.py has the contract).

Microsoft Presidio's AnalyzerEngine without any language model: spaCy's blank English
tokenizer stands in for the NLP engine (Presidio's context words still work: each token's
lemma is its lower-cased text). Presidio's own pattern recognisers find e-mails, URLs, phone
numbers (libphonenumber), dates, US SSNs and IP addresses; the recognisers below, run by the
same engine, add what those find only with an NER model or not at all. The spans are replaced
by `deidentification.replace_spans`, as philter's are (presidio-anonymizer's `replace` operator
does the same, and would pin `cryptography` to one minor version for the whole project).
Nothing is downloaded, at install or at run time:
tldextract (Presidio's e-mail check) is pinned to its bundled public-suffix snapshot.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable

import regex
import spacy
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.nlp_engine.slim_spacy_nlp_engine import SlimSpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    DateRecognizer,
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from spacy.language import Language

from common.data.phi_span import Span

# Presidio entity -> fedssl placeholder type.
ENTITY_TYPES = {
    "PERSON": "NAME", "DATE_TIME": "DATE", "PHONE_NUMBER": "PHONE", "EMAIL_ADDRESS": "EMAIL",
    "URL": "URL", "US_SSN": "ID", "IP_ADDRESS": "ID", "RECORD_NUMBER": "ID",
    "STREET_ADDRESS": "ADDRESS",
}
SCORE_THRESHOLD = 0.3  # Presidio scores: patterns 0.3-1.0, raised by context words
# Phone numbers as written in the US, the UK and the EU countries fedssl's users are in.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE", "SE")

# No IGNORECASE for patterns where capitalisation is the evidence.
_CASE = regex.DOTALL | regex.MULTILINE
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_WRITTEN_DATE = (rf"\b(?:{_DAY}\s+{_MONTH}\.?,?\s+\d{{4}}|{_MONTH}\.?\s+{_DAY},?\s+\d{{4}}|"
                 rf"{_MONTH}\.?\s+\d{{4}}|{_MONTH}\.?\s+{_DAY}\b(?!\s*(?:mg|ml|units?)))\b")
# USPS street suffixes (publication 28, the common ones) and unit designators.
_STREET = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Court|Ct|Place|Pl|"
           "Way|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Plaza|"
           "Alley|Bend|Branch|Bridge|Brook|Burg|Bypass|Camp|Canyon|Cape|Causeway|Center|Cliff|"
           "Club|Common|Corner|Course|Cove|Creek|Crescent|Crest|Crossing|Crossroad|Curve|Dale|"
           "Dam|Divide|Estate|Expressway|Extension|Fall|Ferry|Field|Flat|Ford|Forest|Forge|"
           "Fork|Fort|Freeway|Garden|Gateway|Glen|Green|Grove|Harbor|Haven|Heights|Hill|"
           "Hollow|Inlet|Island|Isle|Junction|Key|Knoll|Lake|Land|Landing|Light|Loaf|Lock|"
           "Lodge|Loop|Mall|Manor|Meadow|Mews|Mill|Mission|Motorway|Mount|Mountain|Neck|"
           "Orchard|Oval|Overpass|Park|Pass|Passage|Path|Pike|Pine|Plain|Point|Port|Prairie|"
           "Radial|Ramp|Ranch|Rapid|Rest|Ridge|River|Route|Row|Rue|Run|Shoal|Shore|Skyway|"
           "Spring|Spur|Station|Stravenue|Stream|Summit|Throughway|Trace|Track|Trafficway|"
           "Trailer|Tunnel|Turnpike|Underpass|Union|Valley|Via|Viaduct|View|Village|Ville|"
           "Vista|Walk|Wall|Well")  # singular: the pattern allows a plural "s"
_WORD = r"\p{Lu}[\p{L}'’.-]*"
_NANP = r"(?:(?:\+?1|001)[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}"
_EXTENSION = r"(?:\s*(?:x|ext\.?)\s*\d{1,6})?\b"
_INTERNATIONAL = (rf"(?<![\w+])\+\d{{1,3}}[\s.-]?(?:\(0\)\s?)?\d{{2,5}}(?:[\s.-]?\d{{2,8}}){{1,4}}"
                  rf"{_EXTENSION}")
_ADDRESS = (rf"\b\d{{1,6}}[A-Z]?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"
            rf"(?:{_WORD}\s+){{0,3}}(?:{_STREET})s?\b\.?"
            r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|Fl|Floor|#)\.?\s*#?\s*[\w-]+)?"
            rf"(?:,\s*(?:{_WORD}\s+){{0,2}}{_WORD},?\s+\p{{Lu}}{{2}}\s+\d{{5}}(?:-\d{{4}})?)?")
_ID_CUE = (r"(?:MRN|MR#|MR\s+no\.?|Medical\s+record(?:\s+(?:number|no\.?|#))?|"
           r"Record(?:\s+(?:number|no\.?|#))?|Patient\s+ID|Pt\.?\s+ID|ID|Acct\.?|"
           r"Account(?:\s+(?:number|no\.?|#))?|Chart(?:\s+(?:number|no\.?|#))?|"
           r"Encounter(?:\s+(?:number|no\.?|#))?|Member\s+ID|Policy(?:\s+(?:number|no\.?))?)")


@Language.component("fedssl_lower_lemma")
def _lower_lemma(doc):
    """Blank spaCy has no lemmatizer: Presidio's context words then compare lower-cased text."""
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class BlankSpacyEngine(SlimSpacyNlpEngine):
    """Presidio's slim spaCy engine on `spacy.blank("en")`: tokens only, no model to load."""

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": "en", "model_name": "blank:en"}],
                         auto_download=False)

    def load(self) -> None:
        nlp = spacy.blank("en")
        nlp.add_pipe("fedssl_lower_lemma")
        self.nlp = {"en": nlp}


_OFFLINE_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recogniser, its domain check on tldextract's bundled snapshot (the
    module default fetches the public-suffix list from the internet on first use)."""

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_TLD(pattern_text).fqdn != ""


class NameRecognizer(EntityRecognizer):
    """Person names without NER: capitalised words in philter-lite's UCSF first/last name
    lists, with the capitalised words, initials and particles next to them.

    A name-list word that is also a word of the public ICD-10-CM headings or of philter's
    safe-word list ("Hodgkin", "Crohn", "White", "Park") is weak: it counts as a name only as
    a first name followed by a last name ("Amy White"), next to a strong name word, or after a
    title (Dr., Mrs., ...), so that eponyms and capitalised words of a note stay.
    """

    TITLES = frozenset({"dr", "mr", "mrs", "ms", "miss", "mx", "prof", "sir", "dame", "rev"})
    PARTICLES = frozenset({"de", "del", "della", "der", "di", "da", "van", "von", "le", "la",
                           "du", "dos", "das", "ter", "ten", "bin", "al", "el", "y"})
    TOKEN = regex.compile(r"\p{L}[\p{L}'’]*(?:-\p{L}[\p{L}'’]*)*\.?")
    CAPITALISED = ("strong", "weak", "unknown")

    def __init__(self, first: frozenset[str], last: frozenset[str], safe: frozenset[str]):
        self.first, self.last, self.safe = first, last, safe
        super().__init__(supported_entities=["PERSON"], name="fedssl names (philter lists)",
                         supported_language="en")

    def load(self) -> None:  # the lists come in through __init__
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
                ) -> list[RecognizerResult]:
        tokens = [(m.start(), m.end(), m.group()) for m in self.TOKEN.finditer(text)]
        kinds = [self._kind(word) for _, _, word in tokens]
        # what separates two tokens ("." of a word that ends a sentence included)
        gaps = [("." if tokens[n][2].endswith(".") and kinds[n] not in ("initial", "title")
                 else "") + text[tokens[n][1]:tokens[n + 1][0]] for n in range(len(tokens) - 1)]
        first = [self._in(word, self.first) for _, _, word in tokens]
        # could be part of a name: a name-list word, or a capitalised word no list knows
        namelike = [kind in ("strong", "weak") or (kind == "unknown" and not self._in(
            word, self.safe)) for (_, _, word), kind in zip(tokens, kinds, strict=True)]
        core = [kind == "strong" for kind in kinds]
        for n in range(len(tokens) - 1):
            here, after = kinds[n], kinds[n + 1]
            if gaps[n] == " " and namelike[n] and namelike[n + 1] \
                    and (first[n] or here == "unknown") \
                    and ("weak" in (here, after) or here == after == "unknown") \
                    and (after != "weak" or self._in(tokens[n + 1][2], self.last)):
                core[n] = core[n + 1] = True  # "Amy White", "Chavvi Bath"
            if gaps[n] == ", " and here == after == "weak" and first[n + 1] \
                    and self._in(tokens[n][2], self.last):
                core[n] = core[n + 1] = True  # "Brown, Mark"
            if gaps[n] == " " and here in ("title", "initial") and after in self.CAPITALISED:
                core[n + 1] = True  # "Dr. House", "J. Smith"
        for _ in range(2):  # grow names by their neighbours, both ways, twice
            for n in range(len(tokens) - 1):
                if core[n] and _surname_after(n, kinds, gaps, first, namelike):
                    core[n + 1] = True
            for n in range(len(tokens) - 2, -1, -1):
                if core[n + 1] and _name_before(n, kinds, gaps, first, namelike, core):
                    core[n] = True
        for n in range(len(tokens) - 1):  # particles before or inside a name: "Da Costa"
            if kinds[n] == "particle" and core[n + 1] and gaps[n] == " ":
                core[n] = True
        results, n = [], 0
        while n < len(tokens):
            if not core[n]:
                n += 1
                continue
            m = n
            while m + 1 < len(tokens) and core[m + 1] and gaps[m] in (" ", ", "):
                m += 1
            end = tokens[m][1] - (tokens[m][2].endswith(".") and kinds[m] != "initial")
            results.append(RecognizerResult("PERSON", tokens[n][0], end, 0.6))
            n = m + 1
        return results

    def _in(self, word: str, names: frozenset[str]) -> bool:
        return any(part in names for part in _parts(word))

    def _kind(self, word: str) -> str:
        bare = word.rstrip(".")
        low = bare.lower()
        if low in self.TITLES and bare[:1].isupper():
            return "title"
        if len(bare) == 1 and bare.isupper():
            return "initial"
        if low in self.PARTICLES:
            return "particle"
        if not bare[:1].isupper() or (bare.isupper() and len(bare) < 5):
            return "other"  # lower-case words and acronyms (HIV, ICU, COPD) are no names
        parts = _parts(bare)
        if any(p in self.first or p in self.last for p in parts):
            return "weak" if all(p in self.safe for p in parts) else "strong"
        return "unknown"


def _surname_after(n: int, kinds: list[str], gaps: list[str], first: list[bool],
                   namelike: list[bool]) -> bool:
    """Token n+1 continues the name that token n belongs to: an initial, a name-like word,
    "Smith, John", or any capitalised word after a first name ("Maurice Salmon")."""
    after = kinds[n + 1]
    if gaps[n] == " ":
        return after == "initial" or namelike[n + 1] or (
            first[n] and after in NameRecognizer.CAPITALISED)
    return gaps[n] == ", " and namelike[n + 1] and (first[n + 1] or after == "unknown")


def _name_before(n: int, kinds: list[str], gaps: list[str], first: list[bool],
                 namelike: list[bool], core: list[bool]) -> bool:
    """Token n starts the name that token n+1 belongs to: an initial, a first name or an
    unknown capitalised word before it, or the surname of "Last, First"."""
    if gaps[n] == " ":
        return kinds[n] == "initial" or (namelike[n] and (first[n] or kinds[n] == "unknown"))
    return (gaps[n] == ", " and namelike[n] and first[n + 1]
            and (n == 0 or not core[n - 1] or gaps[n - 1] != " "))


def _parts(word: str) -> list[str]:
    """A word's lower-case, accent-free parts ("Jean-Léon" -> jean, leon), as the lists hold."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", word.lower())
                     if not unicodedata.combining(c))
    return [part for part in regex.split(r"[-'’.]", folded) if part]


def _pattern(entity: str, name: str, patterns: list[tuple[str, float]],
             context: list[str] | None = None, flags: int = _CASE) -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity=entity, name=name, context=context, global_regex_flags=flags,
        patterns=[Pattern(f"{name} {i}", regex_, score) for i, (regex_, score)
                  in enumerate(patterns)])


def fedssl_recognizers(names: NameRecognizer) -> list[EntityRecognizer]:
    """The recognisers fedssl adds to Presidio's own."""
    return [
        names,
        _pattern("RECORD_NUMBER", "fedssl record numbers", [
            (rf"(?<=\b{_ID_CUE}\s*(?:[:#]|no\.?)?[\s:#]*)[A-Z]{{0,3}}-?\d[\d-]{{3,16}}\d\b", 0.7),
            (r"\b[A-Z]{2,4}-?\d{5,12}\b", 0.4),  # letter-prefixed record numbers
            (r"\b\d{7,}\b", 0.35),  # long digit runs (no measurement in a note has 7 digits)
        ], context=["mrn", "record", "id", "account", "acct", "chart", "encounter", "member"]),
        _pattern("STREET_ADDRESS", "fedssl street addresses", [(_ADDRESS, 0.6)]),
        # libphonenumber finds numbers, not their extensions, nor numbers whose area code
        # no carrier uses: North American and international shapes, extension included.
        _pattern("PHONE_NUMBER", "fedssl phone numbers", [
            (rf"(?<![\w+]){_NANP}{_EXTENSION}", 0.5),
            (_INTERNATIONAL, 0.5),
        ], context=["phone", "tel", "call", "cell", "mobile", "fax", "contact"]),
        _pattern("URL", "fedssl urls", [(r"\b(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:)]", 0.6)]),
        _pattern("DATE_TIME", "fedssl written dates", [
            (_WRITTEN_DATE, 0.6),
            (r"\b\d{4}[/.-](?:0?[1-9]|1[0-2])[/.-](?:0?[1-9]|[12]\d|3[01])\b", 0.6),
            (r"\b(?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|[12]\d|3[01])[/.-](?:\d{4}|\d{2})\b",
             0.5),
        ]),
    ]


@functools.lru_cache(maxsize=1)
def _name_lists() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """philter-lite's first and last names, and the words that also name other things."""
    from philter_lite.filters import filter_db

    from common.data.icd10_corpus import load_public_headings

    first = frozenset(filter_db.set_db["firstnames"])
    last = frozenset(filter_db.set_db["lastnames"])
    public = {w.lower() for text in load_public_headings() for w in regex.findall(r"\p{L}+", text)}
    safe = frozenset(public | set(filter_db.set_db["nonames"]))
    return first, last, safe


def analyzer() -> AnalyzerEngine:
    """Presidio's analyzer with the recognisers above (no NER model)."""
    nlp_engine = BlankSpacyEngine()
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (OfflineEmailRecognizer(), UrlRecognizer(), DateRecognizer(),
                       PhoneRecognizer(supported_regions=PHONE_REGIONS), UsSsnRecognizer(),
                       IpRecognizer(), *fedssl_recognizers(NameRecognizer(*_name_lists()))):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def _trimmed_end(text: str, result: RecognizerResult) -> int:
    """A span's end without the sentence punctuation some patterns take along ("x.org/a,")."""
    end = result.end
    if result.entity_type in ("URL", "EMAIL_ADDRESS", "PHONE_NUMBER", "DATE_TIME"):
        while end > result.start + 1 and text[end - 1] in ".,;:)!?":
            end -= 1
    return end


def presidio_detector() -> Callable[[str], list[Span]]:
    """A function from one record to the spans Presidio finds in it."""
    engine = analyzer()
    entities = list(ENTITY_TYPES)

    def detect(text: str) -> list[Span]:
        found = engine.analyze(text, language="en", entities=entities,
                               score_threshold=SCORE_THRESHOLD)
        return [Span(r.start, _trimmed_end(text, r), ENTITY_TYPES[r.entity_type])
                for r in found]

    return detect
