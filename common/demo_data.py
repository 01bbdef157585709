"""The demo's data plan: ICD-10 records → test split, server's labeled set, client partitions.

The same seeded plan is computed on the server (labeled + test) and in each simulated client
(its own partition), so nothing but model weights crosses the federation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from common.icd10_corpus import load_icd10_records
from common.partitioning import plan_splits
from common.run_config import RunConfig


@dataclass(frozen=True)
class DemoSplits:
    """Disjoint splits of the demo corpus."""

    label_names: list[str]
    test_texts: list[str]
    test_labels: np.ndarray
    labeled_texts: list[str]
    labeled_labels: np.ndarray
    client_texts: list[list[str]]  # unlabeled text, one list per simulated client


def demo_splits(config: RunConfig) -> DemoSplits:
    """The split plan for `config` (cached per process on the settings it depends on)."""
    return _demo_splits(
        config.seed,
        config.max_records,
        config.test_fraction,
        config.label_fraction,
        config.num_clients,
        config.dirichlet_alpha,
    )


@functools.lru_cache(maxsize=4)
def _demo_splits(
    seed: int,
    max_records: int,
    test_fraction: float,
    label_fraction: float,
    num_clients: int,
    alpha: float,
) -> DemoSplits:
    records = load_icd10_records()
    texts = np.array(records.texts, dtype=object)
    labels = np.array(records.labels)
    plan = plan_splits(labels, test_fraction=test_fraction, label_fraction=label_fraction,
                       num_clients=num_clients, dirichlet_alpha=alpha, seed=seed,
                       max_records=max_records)
    return DemoSplits(
        label_names=records.label_names,
        test_texts=texts[plan.test].tolist(),
        test_labels=labels[plan.test],
        labeled_texts=texts[plan.labeled].tolist(),
        labeled_labels=labels[plan.labeled],
        client_texts=[texts[p].tolist() for p in plan.clients],
    )
