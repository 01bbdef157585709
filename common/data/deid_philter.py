"""The `philter` de-identification engine (common/data/deidentification.py has the contract).

philter-lite (a maintained fork of UCSF's Philter) with its shipped `philter_delta`
configuration: regexes and context rules for dates, names (UCSF first/last name lists),
addresses, ages, SSNs and e-mails mark identifiers; safe-word lists and "safe" regexes keep
ordinary words; every remaining token is removed too (Philter's design: high recall first).

Philter tags parts of speech with NLTK's perceptron tagger, whose model NLTK downloads at run
time (`nltk.download`); fedssl never downloads, so `_shape_pos` stands in for it: capitalised
words are proper nouns (NNP, what the name lists are matched on), digit runs are numbers (CD,
kept unless a regex marks them), everything else a common noun.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import as_file, files

import philter_lite
import philter_lite.philter as philter_module

from common.data.phi_span import Span

# philter's types -> fedssl placeholder types; untyped removals become PHI.
PHILTER_TYPES = {
    "DATE": "DATE", "Name": "NAME", "Email": "EMAIL", "Age": "AGE",
    "Patient_Social_Security_Number": "ID", "Provider_Address_or_Location": "ADDRESS",
    "OTHER": "PHI",
}


def _shape_pos(text: str) -> list[tuple[str, str]]:
    """Philter's token list with a POS tag from each token's shape (see the module doc)."""
    tagged = []
    for word in philter_module._get_clean(text):
        if word.isspace():
            tag = "SP"
        elif word.isdigit():
            tag = "CD"
        elif word[:1].isupper():
            tag = "NNP"
        else:
            tag = "NN"
        tagged.append((word, tag))
    return tagged


def philter_detector() -> Callable[[str], list[Span]]:
    """A function from one record to the spans philter removes from it."""
    philter_module._get_pos = _shape_pos  # philter's only use of NLTK (no tagger download)
    with as_file(files("philter_lite").joinpath("configs/philter_delta.toml")) as path:
        patterns = philter_lite.load_filters(str(path))

    def detect(text: str) -> list[Span]:
        include, _, tracker = philter_lite.detect_phi(text, patterns)
        typed = [(p.start, p.stop, PHILTER_TYPES.get(p.phi_type, "PHI")) for p in tracker.phi]
        spans = []
        for start, end in _removed_runs(text, include):
            kinds = [kind for s, e, kind in typed if s < end and start < e and kind != "PHI"]
            spans.append(Span(start, end, kinds[0] if kinds else "PHI"))
        return spans

    return detect


def _removed_runs(text: str, include) -> list[tuple[int, int]]:
    """Runs of letters and digits philter would mask (not in its include map), joined over
    the punctuation between them ("555-0100", "J. Smith" stay one span)."""
    kept = {i for start, stop in include.filecoords() for i in range(start, stop)}
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        if text[i].isalnum() and i not in kept:
            j = i
            while j < len(text) and text[j].isalnum() and j not in kept:
                j += 1
            if runs and _joinable(text[runs[-1][1]:i]):
                runs[-1] = (runs[-1][0], j)
            else:
                runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _joinable(gap: str) -> bool:
    return 0 < len(gap) <= 3 and "\n" not in gap and all(not c.isalnum() for c in gap)
