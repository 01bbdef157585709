"""Seeded splitting and non-IID partitioning of labelled records (index arithmetic only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.run_config import ConfigError, RunConfig

MIN_RECORDS_PER_CLIENT = 2


@dataclass(frozen=True)
class SplitPlan:
    """Indices into a dataset: test split, the server's labeled set, one part per client."""

    test: np.ndarray
    labeled: np.ndarray
    clients: list[np.ndarray]


@dataclass(frozen=True)
class SplitSettings:
    """The run settings a demo split depends on (hashable: the split caches key on it)."""

    seed: int
    test_fraction: float
    label_fraction: float
    num_clients: int
    dirichlet_alpha: float
    max_records: int = 0

    @classmethod
    def from_config(cls, config: RunConfig) -> SplitSettings:
        """The split-relevant part of a run config."""
        return cls(seed=config.seed, test_fraction=config.test_fraction,
                   label_fraction=config.label_fraction, num_clients=config.num_clients,
                   dirichlet_alpha=config.dirichlet_alpha, max_records=config.max_records)


def plan_splits(labels: np.ndarray, settings: SplitSettings) -> SplitPlan:
    """The demo split of any labelled dataset, seeded: every task splits the same way.

    Optionally a seeded subset of `max_records`; then a stratified test split; a stratified
    `label_fraction` of the rest for the server; the remaining unlabeled records spread over
    the clients non-IID (Dirichlet over labels). Raises ConfigError ("label-fraction" or
    "num-clients") when the split is impossible.
    """
    seed, max_records = settings.seed, settings.max_records
    test_fraction, label_fraction = settings.test_fraction, settings.label_fraction
    num_clients, dirichlet_alpha = settings.num_clients, settings.dirichlet_alpha
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = np.arange(len(labels))
    if max_records and max_records < len(labels):
        kept = np.sort(rng.choice(len(labels), size=max_records, replace=False))
    labels = labels[kept]
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
            labels[unlabeled_idx], num_clients, dirichlet_alpha, rng, MIN_RECORDS_PER_CLIENT
        )
    except ValueError as err:
        raise ConfigError("num-clients", str(err)) from None
    return SplitPlan(test=kept[test_idx], labeled=kept[labeled_idx],
                     clients=[kept[unlabeled_idx[p]] for p in parts])


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (taken, rest), taking `fraction` of every class.

    Per class, round(fraction · n_c) records are taken, so classes with one or two members
    (where scikit-learn's stratified split refuses to work) are handled: they may land wholly
    on one side. Both outputs are sorted.
    """
    taken: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        taken.append(members[: int(round(fraction * len(members)))])
    chosen = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return chosen, rest


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split indices across clients non-IID: each class is divided by Dirichlet(alpha) shares.

    Small alpha → each client sees few classes. Redraws (up to 100 times) until every client
    holds at least `min_size` records; raises ValueError if that is impossible.
    """
    if num_clients * min_size > len(labels):
        raise ValueError(
            f"cannot give {num_clients} clients {min_size}+ records each from {len(labels)}"
        )
    classes = np.unique(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=int)) for p in parts]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) left a client with < {min_size} records in 100 draws; "
        "use fewer clients or a larger alpha"
    )
