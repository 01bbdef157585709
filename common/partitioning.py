"""Seeded splitting and non-IID partitioning of labelled records (index arithmetic only)."""

from __future__ import annotations

import numpy as np


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
