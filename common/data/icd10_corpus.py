"""The embedded demo corpus: ICD-10-CM code descriptions from `simple-icd-10-cm`.

Records are the 74,736 leaf (billable) code descriptions, labelled by their chapter (22
classes). The non-leaf headings (chapters, blocks, categories) are a separate *public* corpus:
fedssl trains its WordPiece vocabulary on them, never on a client's records.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import simple_icd_10_cm as icd


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer class labels and the names of those classes."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


@functools.lru_cache(maxsize=1)
def load_icd10_records() -> LabelledTexts:
    """All leaf ICD-10-CM descriptions labelled by chapter (0..21), in code order."""
    chapters = [code for code in icd.get_all_codes(with_dots=True) if icd.is_chapter(code)]
    chapter_index = {code: i for i, code in enumerate(chapters)}
    texts: list[str] = []
    labels: list[int] = []
    for code in icd.get_all_codes(with_dots=True):
        if icd.is_leaf(code):
            texts.append(icd.get_description(code))
            labels.append(chapter_index[icd.get_ancestors(code)[-1]])
    names = [icd.get_description(code) for code in chapters]
    return LabelledTexts(texts=texts, labels=labels, label_names=names)


@functools.lru_cache(maxsize=1)
def load_public_headings() -> list[str]:
    """Non-leaf ICD-10-CM headings: public text disjoint from the leaf records.

    About 1.4% of headings repeat a leaf description word for word; they are left out, so the
    vocabulary is built from no string that is also a (simulated) client record.
    """
    records = set(load_icd10_records().texts)
    return [
        text
        for code in icd.get_all_codes(with_dots=True)
        if not icd.is_leaf(code) and (text := icd.get_description(code)) not in records
    ]
