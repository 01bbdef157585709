"""Label budgets for label-efficiency sweeps: which labeled records an arm may use.

A budget is either a number of labels per class (`"5"`) or a share of the server's labeled pool
(`"10%"`). Selections are seeded and nested: with the same seed, the records of a smaller
budget are a subset of a larger one's, so curves over budgets compare like with like. Every arm
of a sweep cell sees exactly the same selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_VALIDATION_PER_CLASS = 2  # a class needs this many labels before one goes to validation


class BudgetError(ValueError):
    """A label budget that cannot be parsed."""


@dataclass(frozen=True, order=True)
class LabelBudget:
    """`per_class` labels of every class, or `fraction` of the labeled pool (one is set)."""

    per_class: int = 0
    fraction: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LabelBudget:
        """`"5"` → 5 per class; `"10%"` → 10% of the pool."""
        raw = str(text).strip()
        try:
            if raw.endswith("%"):
                share = float(raw[:-1]) / 100
                if not 0 < share <= 1:
                    raise BudgetError(f"label budget {raw!r}: a share must be in (0%, 100%]")
                return cls(fraction=share)
            count = int(raw)
        except ValueError:
            raise BudgetError(f"label budget {raw!r}: expected labels per class (e.g. 5) or "
                              "a share of the labeled pool (e.g. 10%)") from None
        if count < 1:
            raise BudgetError(f"label budget {raw!r}: needs at least 1 label per class")
        return cls(per_class=count)

    @property
    def name(self) -> str:
        """`"5/class"` or `"10%"` (stable: CSV keys use it)."""
        if self.per_class:
            return f"{self.per_class}/class"
        return f"{self.fraction * 100:g}%"


def select_labeled(labels: np.ndarray, budget: LabelBudget, seed: int) -> np.ndarray:
    """Sorted indices into `labels` (the labeled pool) that `budget` may use.

    Per class: the first `per_class` of a seeded permutation of each class's records (all of
    them if the class has fewer). Share: the first ceil(share · N) of a seeded permutation of
    the pool, so rare classes appear as often as they do in the pool.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x1ABE1])
    if budget.fraction:
        order = rng.permutation(len(labels))
        return np.sort(order[: math.ceil(budget.fraction * len(labels))])
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[: budget.per_class]
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def validation_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, validation) positions within a selection, stratified; None if impossible.

    Each class with at least MIN_VALIDATION_PER_CLASS labels gives round(fraction · n) of them
    (at least one, always leaving one for training). With no such class (e.g. 1 label per
    class) there is no validation split and recipes that need one do not apply.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x7A1])
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) >= MIN_VALIDATION_PER_CLASS:
            take = min(max(1, round(fraction * len(members))), len(members) - 1)
            val.append(members[:take])
    if not val:
        return None
    validation = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation
