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
    partition: str = "dirichlet"  # "dirichlet", "iid" or "column" (needs `groups`)
    # false (pretraining only): the server fine-tunes and tests nothing, so a split that
    # leaves it no test or labelled records (e.g. a folder without labels) is fine.
    downstream: bool = True

    @classmethod
    def from_config(cls, config: RunConfig) -> SplitSettings:
        """The split-relevant part of a run config."""
        return cls(seed=config.seed, test_fraction=config.test_fraction,
                   label_fraction=config.label_fraction, num_clients=config.num_clients,
                   dirichlet_alpha=config.dirichlet_alpha, max_records=config.max_records,
                   partition=config.partition, downstream=config.downstream)


def plan_splits(
    labels: np.ndarray, settings: SplitSettings, groups: np.ndarray | None = None
) -> SplitPlan:
    """The demo split of any dataset, seeded: every task and data source splits the same way.

    Optionally a seeded subset of `max_records`; then a stratified test split of the labelled
    records; a stratified `label_fraction` of the rest for the server; the remaining records
    (with every unlabelled one: label -1) spread over the clients by `settings.partition`:
    Dirichlet over labels (unlabelled records spread evenly, see `_client_parts`), IID, or
    "column": one client per distinct value of `groups` (int codes, -1 = none). Raises
    ConfigError ("test-fraction", "label-fraction", "num-clients" or "partition") when the
    split is impossible; with `downstream` false, empty test and labelled splits are fine.
    """
    seed, max_records = settings.seed, settings.max_records
    test_fraction, label_fraction = settings.test_fraction, settings.label_fraction
    num_clients = settings.num_clients
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = np.arange(len(labels))
    if max_records and max_records < len(labels):
        kept = np.sort(rng.choice(len(labels), size=max_records, replace=False))
    labels = labels[kept]
    # Only labelled records can be test or server records; with every record labelled (the
    # demo data) `have` is arange(n) and the draws are exactly those of the original plan.
    have = np.flatnonzero(labels >= 0)
    test_sub, train_sub = stratified_split(labels[have], test_fraction, rng)
    test_idx, train_idx = have[test_sub], have[train_sub]
    taken, pool = stratified_split(labels[train_idx], label_fraction, rng)
    labeled_idx = train_idx[taken]
    unlabeled_idx = np.union1d(train_idx[pool], np.flatnonzero(labels < 0))
    if settings.downstream:
        _require_server_splits(len(have), labels[train_idx], test_idx, labeled_idx, settings)
    needed = num_clients * MIN_RECORDS_PER_CLIENT
    if len(unlabeled_idx) < needed:
        raise ConfigError(
            "num-clients",
            f"{num_clients} clients need at least {needed} unlabeled records, "
            f"only {len(unlabeled_idx)} remain after the test and labeled splits",
        )
    parts = _client_parts(labels[unlabeled_idx], settings, rng,
                          None if groups is None else np.asarray(groups)[kept][unlabeled_idx])
    return SplitPlan(test=kept[test_idx], labeled=kept[labeled_idx],
                     clients=[kept[unlabeled_idx[p]] for p in parts])


def _require_server_splits(
    labelled: int, train_labels: np.ndarray, test_idx: np.ndarray, labeled_idx: np.ndarray,
    settings: SplitSettings,
) -> None:
    """ConfigError, with the fix, when fine-tuning would get no test or no labelled records.

    `labelled`: labelled records in all; `train_labels`: those outside the test split.
    """
    pretrain_only = "or set downstream=false for a pretraining-only run"
    if len(test_idx) == 0:
        raise ConfigError("test-fraction", f"{settings.test_fraction} of {labelled} labelled "
                          "records leaves no test records: label more records, raise "
                          f"test-fraction, {pretrain_only}")
    if len(labeled_idx) == 0:
        counts = np.bincount(train_labels) if len(train_labels) else np.array([], dtype=int)
        counts = counts[counts > 0]
        # stratified_split takes round(f * n) per class: >= 1 for all once f >= 1/n_min.
        raise_it = (f"raise it (label-fraction={1 / counts.min():.3g} gives every class at "
                    "least one), " if len(counts) else "")
        raise ConfigError(
            "label-fraction",
            f"{settings.label_fraction} leaves no labeled records ({len(train_labels)} "
            f"labelled records outside the test split): {raise_it}label more records, "
            f"{pretrain_only}")


def _client_parts(
    labels: np.ndarray, settings: SplitSettings, rng: np.random.Generator,
    groups: np.ndarray | None,
) -> list[np.ndarray]:
    """Positions into the client pool, one array per client, by the settings' partition."""
    num_clients = settings.num_clients
    if settings.partition == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]
    if settings.partition == "column":
        if groups is None:
            raise ConfigError("partition", "'column' needs data with a `client` field")
        missing = int(np.count_nonzero(groups < 0))
        if missing:
            raise ConfigError("partition", f"{missing} record(s) of the client pool have no "
                              "`client` value; give every unlabelled record one")
        names = np.unique(groups)
        if len(names) != num_clients:
            raise ConfigError("num-clients", f"the data's `client` field names {len(names)} "
                              f"clients; set num-clients={len(names)}")
        parts = [np.flatnonzero(groups == name) for name in names]
        small = [i for i, p in enumerate(parts) if len(p) < MIN_RECORDS_PER_CLIENT]
        if small:
            raise ConfigError("partition", f"{len(small)} client(s) keep fewer than "
                              f"{MIN_RECORDS_PER_CLIENT} records after the test and labeled "
                              "splits")
        return parts
    # Dirichlet skews the labelled records by class. Unlabelled ones (-1) have no class to
    # skew by: as "one more class" a mostly unlabelled pool went wholesale by one Dirichlet
    # draw (clients of 13,047 / 1,252 / 332 / ... records), so they are dealt out evenly
    # (seeded). A fully labelled pool (the demo data) draws nothing extra: same plan as ever.
    unlabelled, labelled = np.flatnonzero(labels < 0), np.flatnonzero(labels >= 0)
    even = np.array_split(rng.permutation(unlabelled), num_clients) if len(unlabelled) \
        else [np.array([], dtype=int)] * num_clients
    try:
        skewed = dirichlet_partition(labels[labelled], num_clients, settings.dirichlet_alpha,
                                     rng, MIN_RECORDS_PER_CLIENT,
                                     held=np.array([len(e) for e in even]))
    except ValueError as err:
        raise ConfigError("num-clients", str(err)) from None
    return [np.sort(np.concatenate([e, labelled[p]]).astype(int)) for e, p in zip(even, skewed)]


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
        taken.append(members[: round(fraction * len(members))])
    chosen = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return chosen, rest


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    held: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split indices across clients non-IID: each class is divided by Dirichlet(alpha) shares.

    Small alpha → each client sees few classes. Redraws (up to 100 times) until every client
    holds at least `min_size` records, counting the `held` records it already has from
    elsewhere (default none); raises ValueError if that is impossible.
    """
    held = np.zeros(num_clients, dtype=int) if held is None else np.asarray(held)
    if num_clients * min_size > len(labels) + held.sum():
        raise ValueError(
            f"cannot give {num_clients} clients {min_size}+ records each from "
            f"{len(labels) + held.sum()}"
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
        if min(len(p) + h for p, h in zip(parts, held)) >= min_size:
            return [np.sort(np.array(p, dtype=int)) for p in parts]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) left a client with < {min_size} records in 100 draws; "
        "use fewer clients or a larger alpha"
    )
