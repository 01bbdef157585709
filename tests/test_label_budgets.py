"""Label budgets and sweep grids: seeded, nested selections; grids validated before running."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.label_budgets import BudgetError, LabelBudget, select_labeled, validation_split
from simulations.sweep_grid import GridError, parse_grid

LABELS = np.array([0] * 50 + [1] * 30 + [2] * 3 + [3] * 1)


def test_budget_parsing_and_names():
    assert LabelBudget.parse("5") == LabelBudget(per_class=5)
    assert LabelBudget.parse(" 10% ") == LabelBudget(fraction=0.1)
    assert LabelBudget.parse("5").name == "5/class"
    assert LabelBudget.parse("1%").name == "1%"
    for bad in ("0", "-3", "abc", "0%", "150%", "2.5"):
        with pytest.raises(BudgetError):
            LabelBudget.parse(bad)


def test_per_class_selection_caps_at_class_size_and_is_seeded():
    chosen = select_labeled(LABELS, LabelBudget(per_class=5), seed=3)
    counts = np.bincount(LABELS[chosen], minlength=4)
    assert counts.tolist() == [5, 5, 3, 1]  # rare classes give what they have
    assert np.array_equal(chosen, select_labeled(LABELS, LabelBudget(per_class=5), seed=3))
    assert not np.array_equal(chosen, select_labeled(LABELS, LabelBudget(per_class=5), seed=4))


def test_selections_are_nested_across_budgets():
    small = set(select_labeled(LABELS, LabelBudget(per_class=2), seed=1))
    large = set(select_labeled(LABELS, LabelBudget(per_class=20), seed=1))
    assert small < large
    share_small = set(select_labeled(LABELS, LabelBudget(fraction=0.1), seed=1))
    share_large = set(select_labeled(LABELS, LabelBudget(fraction=0.5), seed=1))
    assert share_small < share_large
    assert len(share_large) == int(np.ceil(0.5 * len(LABELS)))


def test_validation_split_is_stratified_disjoint_and_absent_for_one_per_class():
    picked = LABELS[select_labeled(LABELS, LabelBudget(per_class=10), seed=0)]
    train, val = validation_split(picked, 0.2, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(picked)
    assert set(picked[val]) == {0, 1, 2}  # class 3 has one label: it stays in training
    assert set(picked[train]) == {0, 1, 2, 3}  # every class keeps a training label
    one_each = LABELS[select_labeled(LABELS, LabelBudget(per_class=1), seed=0)]
    assert validation_split(one_each, 0.2, seed=0) is None


GRID = {
    "task": "mlm", "seeds": [0, 1], "label-budgets": ["1", "5%"], "recipes": ["probe"],
    "rounds": [2, 1], "settings": {"max-records": 2000},
    "pretraining": {"ssl": {"noise-multiplier": 0}, "dp": {"target-epsilon": 3}},
}


def test_grid_parses_and_builds_valid_run_configs():
    grid = parse_grid(GRID, {"num-clients": "4"})
    assert grid.rounds == (1, 2) and [a.name for a in grid.arms] == ["ssl", "dp"]
    config = grid.run_config(1, grid.arms[1], 2)
    assert (config.seed, config.num_rounds, config.num_clients) == (1, 2, 4)
    assert config.target_epsilon == 3 and config.max_records == 2000


@pytest.mark.parametrize(("change", "message"), [
    ({"pretraining": {"x": {"label-fraction": 0.5}}}, "may not set label-fraction"),
    ({"pretraining": {"x": {"target-epsilon": -1}}}, "target-epsilon"),
    ({"pretraining": {}}, "at least one"),
    ({"recipes": ["magic"]}, "unknown"),
    ({"label-budgets": ["zero"]}, "label budget"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"colour": "blue"}, "unknown grid key"),
])
def test_grid_errors_name_the_problem(change, message):
    with pytest.raises(GridError, match=message):
        parse_grid({**GRID, **change}, {})
