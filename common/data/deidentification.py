"""De-identification of a node's text records before anything learns from them.

`deidentify(texts, engine)` finds identifiers in every record and replaces each span with a
typed placeholder (`[NAME]`, `[DATE]`, `[PHONE]`, `[ID]`, `[EMAIL]`, `[ADDRESS]`, `[URL]`,
`[AGE]`, and `[PHI]` for what an engine removes without a type), and returns per-type counts
(spans, and records with at least one span): counts only, never what was found.

Engines (a node picks one with its own `deid` setting, client/node_settings.py):

* `presidio`: Microsoft Presidio's analyzer (presidio-analyzer) with no language
  model: a blank spaCy English tokenizer (spaCy ships no English NER model on PyPI, and
  nothing is downloaded at run time). Presidio's own recognisers find e-mails, URLs, phone
  numbers (Google's libphonenumber), dates, US SSNs and IP addresses. fedssl adds Presidio
  recognisers for what those miss without NER: person names (philter-lite's UCSF first/last
  name lists, capitalised, not a word of the public ICD-10-CM headings, joined with initials
  and titles), record numbers (digit runs next to MRN/ID/account cues), street addresses
  (house number, street, suffix, unit, city/state/ZIP) and written-out dates.
* `philter`: philter-lite (UCSF's Philter, its shipped `philter_delta` configuration): every
  token that its safe-word lists and regexes do not keep is removed. It needs NLTK's
  perceptron POS tagger, whose data NLTK downloads at run time; fedssl never does, so the
  tagger is replaced by a stand-in from word shape (capitalised = proper noun, digits =
  number). Spans philter types (dates, names, e-mails, SSNs, ages, locations) keep their
  type; the rest become `[PHI]`.

This is best-effort detection, not a guarantee: a missed identifier reaches training (where
only DP-SGD bounds what the model reveals about it). docs/deidentification.md has the
measured recall and precision (benchmarks/deid_eval.md).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from common.config_error import ConfigError
from common.data.phi_span import Span

DEID_OFF = "off"
DEID_ENGINES = (DEID_OFF, "presidio", "philter")
# Placeholder types, in report order.
PHI_TYPES = ("NAME", "DATE", "PHONE", "ID", "EMAIL", "ADDRESS", "URL", "AGE", "PHI")
# The packages each engine imports (what `pip install` needs, named in errors).
ENGINE_PACKAGES = {
    "presidio": ("presidio-analyzer", "philter-lite"),
    "philter": ("philter-lite",),
}


def placeholder(phi_type: str) -> str:
    """The text a span of `phi_type` becomes."""
    return f"[{phi_type}]"


@dataclass(frozen=True)
class DeidCounts:
    """What a pass replaced, per type: spans, and records with at least one (no content)."""

    engine: str
    records: int  # records looked at
    changed_records: int = 0  # records with at least one span of any type
    spans: dict[str, int] = field(default_factory=dict)  # type -> spans
    records_with: dict[str, int] = field(default_factory=dict)  # type -> records with one

    @property
    def total_spans(self) -> int:
        return sum(self.spans.values())

    def lines(self) -> list[str]:
        """The per-type table `fedssl check-data --deid` prints (counts only)."""
        head = (f"de-identification ({self.engine}): {self.total_spans:,} spans would be "
                f"replaced in {self.changed_records:,} of {self.records:,} records")
        rows = [f"  {placeholder(t):<10} {self.spans[t]:>9,} spans in {self.records_with[t]:>9,}"
                " records" for t in PHI_TYPES if self.spans.get(t)]
        return [head, *rows]


def check_engine(value: object, key: str = "deid") -> str:
    """The engine name `value` names; ConfigError naming `key` when it is none of them."""
    name = str(value).strip().lower()
    if name not in DEID_ENGINES:
        raise ConfigError(key, f"must be one of {', '.join(DEID_ENGINES)}, got {value!r}")
    return name


def deidentify(texts: Sequence[str], engine: str) -> tuple[list[str], DeidCounts]:
    """Every record with its detected identifiers replaced by typed placeholders, and the
    per-type counts. `engine="off"` returns the records unchanged (zero counts).

    Raises ConfigError("deid", ...) naming the packages to install when the engine's library
    is missing.
    """
    engine = check_engine(engine)
    if engine == DEID_OFF:
        return list(texts), DeidCounts(engine, len(texts))
    found = detect(texts, engine)
    out = [replace_spans(text, spans) for text, spans in zip(texts, found, strict=True)]
    return out, count_spans(engine, found)


def detect(texts: Sequence[str], engine: str) -> list[list[Span]]:
    """The spans `engine` would replace in each record (sorted, non-overlapping)."""
    detector = _detector(check_engine(engine))
    return [merge_spans(detector(text)) if text.strip() else [] for text in texts]


def count_spans(engine: str, found: Sequence[Sequence[Span]]) -> DeidCounts:
    spans: Counter[str] = Counter()
    records_with: Counter[str] = Counter()
    for record in found:
        kinds = Counter(span.phi_type for span in record)
        spans.update(kinds)
        records_with.update(kinds.keys())
    return DeidCounts(engine, len(found), sum(bool(record) for record in found), dict(spans),
                      dict(records_with))


def replace_spans(text: str, spans: Sequence[Span]) -> str:
    """`text` with each (sorted, non-overlapping) span replaced by its placeholder."""
    parts, last = [], 0
    for span in spans:
        parts.append(text[last:span.start])
        parts.append(placeholder(span.phi_type))
        last = span.end
    parts.append(text[last:])
    return "".join(parts)


# Which type wins where spans of two types overlap: the more specific detector.
_PRIORITY = {t: i for i, t in enumerate(("EMAIL", "URL", "DATE", "ID", "ADDRESS", "PHONE",
                                         "AGE", "NAME", "PHI"))}


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping spans: overlapping ones (and touching ones of one type) joined,
    typed by the most specific type among them."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.end <= span.start:
            continue
        last = merged[-1] if merged else None
        if last is not None and (span.start < last.end or (
                span.start == last.end and span.phi_type == last.phi_type)):
            kind = min(last.phi_type, span.phi_type, key=_PRIORITY.__getitem__)
            merged[-1] = Span(last.start, max(last.end, span.end), kind)
        else:
            merged.append(span)
    return merged


@functools.lru_cache(maxsize=2)
def _detector(engine: str):
    """The engine's detector (built once per process: loading takes a few seconds)."""
    try:
        if engine == "presidio":
            from common.data.deid_presidio import presidio_detector

            return presidio_detector()
        from common.data.deid_philter import philter_detector

        return philter_detector()
    except ImportError as err:
        raise ConfigError("deid", f"engine '{engine}' needs the packages "
                          f"{', '.join(ENGINE_PACKAGES[engine])} (pip install them; "
                          f"missing: {err.name})") from None

