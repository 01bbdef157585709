"""The demo data plan: real ICD-10 records, disjoint seeded splits, non-IID partitions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from common.data.demo_text import demo_splits
from common.data.icd10_corpus import load_icd10_records, load_public_headings
from common.data.partitioning import dirichlet_partition, stratified_split
from common.run_config import ConfigError, RunConfig


def test_icd10_records_and_public_headings_are_disjoint():
    records = load_icd10_records()
    assert len(records.texts) == 74_736
    assert len(records.label_names) == 22 and set(records.labels) == set(range(22))
    headings = load_public_headings()
    assert len(headings) > 20_000
    # The tokenizer's public corpus holds no string that is also a record.
    assert not set(headings) & set(records.texts)


def test_default_split_sizes_and_disjointness():
    config = RunConfig()
    splits = demo_splits(config)
    n_test, n_labeled = len(splits.test_texts), len(splits.labeled_texts)
    n_clients = sum(len(c) for c in splits.client_texts)
    assert n_test + n_labeled + n_clients == 74_736
    assert abs(n_test - 0.2 * 74_736) < 30
    assert abs(n_labeled - 0.01 * 0.8 * 74_736) < 30
    assert len(splits.client_texts) == config.num_clients
    # Counter-based: ICD descriptions are not all unique, so compare multisets.
    all_texts = Counter(load_icd10_records().texts)
    used = Counter(splits.test_texts) + Counter(splits.labeled_texts)
    for texts in splits.client_texts:
        used += Counter(texts)
    assert used == all_texts


def test_splits_are_seeded():
    a = demo_splits(RunConfig(max_records=2000, seed=1))
    b = demo_splits(RunConfig(max_records=2000, seed=1).replace(num_rounds=9))
    c = demo_splits(RunConfig(max_records=2000, seed=2))
    assert a.labeled_texts == b.labeled_texts and a.client_texts == b.client_texts
    assert a.labeled_texts != c.labeled_texts


def test_stratified_split_handles_classes_with_one_member():
    labels = np.array([0] * 100 + [1] * 10 + [2])
    taken, rest = stratified_split(labels, 0.1, np.random.default_rng(0))
    assert Counter(labels[taken].tolist()) == {0: 10, 1: 1}
    assert len(np.intersect1d(taken, rest)) == 0 and len(taken) + len(rest) == len(labels)


def test_dirichlet_small_alpha_is_more_skewed_than_large():
    labels = np.repeat(np.arange(10), 200)

    def skew(alpha: float) -> float:
        parts = dirichlet_partition(labels, 5, alpha, np.random.default_rng(0))
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p)
                              for p in parts]))

    uniform = skew(100.0)
    assert uniform < 0.15  # ~1/10 of each client is its top class
    assert skew(0.1) > 2 * uniform


def test_more_clients_than_records_fails_with_named_setting():
    with pytest.raises(ConfigError) as err:
        demo_splits(RunConfig(max_records=1000, label_fraction=0.1, num_clients=700))
    assert err.value.key == "num-clients"
