"""The demo's data plan: ICD-10 records → test split, server's labeled set, client partitions.

The same seeded plan is computed on the server (labeled + test) and in each simulated client
(its own partition), so nothing but model weights crosses the federation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from common.icd10_corpus import load_icd10_records
from common.partitioning import dirichlet_partition, stratified_split
from common.run_config import ConfigError, RunConfig

MIN_RECORDS_PER_CLIENT = 2


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
    rng = np.random.default_rng(seed)
    if max_records and max_records < len(texts):
        keep = np.sort(rng.choice(len(texts), size=max_records, replace=False))
        texts, labels = texts[keep], labels[keep]

    test_idx, train_idx = stratified_split(labels, test_fraction, rng)
    taken, pool = stratified_split(labels[train_idx], label_fraction, rng)
    labeled_idx, unlabeled_idx = train_idx[taken], train_idx[pool]
    if len(labeled_idx) == 0:
        raise ConfigError("label-fraction", f"{label_fraction} leaves no labeled records")
    needed = num_clients * MIN_RECORDS_PER_CLIENT
    if len(unlabeled_idx) < needed:
        raise ConfigError(
            "num-clients",
            f"{num_clients} clients need at least {needed} unlabeled records, "
            f"only {len(unlabeled_idx)} remain after the test and labeled splits",
        )
    try:
        parts = dirichlet_partition(
            labels[unlabeled_idx], num_clients, alpha, rng, MIN_RECORDS_PER_CLIENT
        )
    except ValueError as err:
        raise ConfigError("num-clients", str(err)) from None
    return DemoSplits(
        label_names=records.label_names,
        test_texts=texts[test_idx].tolist(),
        test_labels=labels[test_idx],
        labeled_texts=texts[labeled_idx].tolist(),
        labeled_labels=labels[labeled_idx],
        client_texts=[texts[unlabeled_idx[p]].tolist() for p in parts],
    )
