"""The demo's data plan: ICD-10 records → test split, server's labeled set, client partitions.

The same seeded plan is computed on the server (labeled + test) and in each simulated client
(its own partition), so nothing but model weights crosses the federation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from common.data.icd10_corpus import load_icd10_records
from common.data.partitioning import SplitSettings, plan_splits
from common.run_config import RunConfig


@dataclass(frozen=True)
class TextSplits:
    """Disjoint splits of the demo corpus."""

    label_names: list[str]
    test_texts: list[str]
    test_labels: np.ndarray
    labeled_texts: list[str]
    labeled_labels: np.ndarray
    client_texts: list[list[str]]  # unlabeled text, one list per simulated client


def demo_splits(config: RunConfig) -> TextSplits:
    """The split plan for `config` (cached per process on the settings it depends on)."""
    return _demo_splits(SplitSettings.from_config(config))


@functools.lru_cache(maxsize=4)
def _demo_splits(settings: SplitSettings) -> TextSplits:
    records = load_icd10_records()
    texts = np.array(records.texts, dtype=object)
    labels = np.array(records.labels)
    plan = plan_splits(labels, settings)
    return TextSplits(
        label_names=records.label_names,
        test_texts=texts[plan.test].tolist(),
        test_labels=labels[plan.test],
        labeled_texts=texts[plan.labeled].tolist(),
        labeled_labels=labels[plan.labeled],
        client_texts=[texts[p].tolist() for p in plan.clients],
    )
