"""A label-efficiency sweep's grid: read once from TOML, validated, expanded into cells.

```toml
task = "mlm"
seeds = [0, 1, 2]
label-budgets = ["1", "5", "20", "1%", "10%"]   # per class, or a share of the labeled pool
recipes = ["finetune", "finetune-es", "finetune-top", "probe"]
headline-budget = "20"     # the budget of the ε plot and of the pretraining-steps plot
rounds = [3]               # pretraining budgets (num-rounds); plots use the largest

[settings]                 # run settings for every arm (pretraining runs and downstream)
label-fraction = 0.1       # the labeled pool every budget is drawn from

[pretraining.ssl]          # one table per federated SSL arm: its own run settings
noise-multiplier = 0       # 0: no noise (non-private); clipping still applies
[pretraining.dp-eps8]
target-epsilon = 8
[pretraining.public-only]  # an arm may set its own `rounds`: 0 = no federated rounds
warm-start-steps = 1000
rounds = [0]
[pretraining.minilm]       # ... and its own `recipes` (a subset of RECIPES)
init = "minilm"
recipes = ["probe"]
```
Every arm of a seed shares the data split, so a pretraining arm may not change the settings
that decide the split or the downstream recipe (seed, fractions, clients, finetune-*); it may
switch `task` to another objective on the same kind of data (`rotation` in an `mae` grid).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.label_budgets import BudgetError, LabelBudget
from common.run_config import ConfigError, RunConfig
from common.tasks import get_task
from server.evaluation.arms import RECIPES

# Settings that decide the split, the labeled pool or the downstream recipe: the same for all.
SHARED_ONLY = ("task", "seed", "run-dir", "num-rounds", "downstream", "test-fraction",
               "label-fraction", "num-clients", "dirichlet-alpha", "max-records",
               "finetune-epochs", "finetune-batch-size", "finetune-learning-rate",
               "finetune-min-steps",
               "tokenizer", "hidden-size", "num-layers", "num-heads", "intermediate-size",
               "max-length", "data", "partition")
GRID_KEYS = ("task", "seeds", "label-budgets", "recipes", "headline-budget", "rounds",
             "settings", "pretraining")


class GridError(ValueError):
    """A sweep grid that cannot run; the message names the key."""


@dataclass(frozen=True)
class PretrainArm:
    """A named federated SSL arm and the run settings it changes."""

    name: str
    settings: dict[str, Any]
    rounds: tuple[int, ...] | None = None  # its own pretraining budgets (None: the grid's)
    recipes: tuple[str, ...] | None = None  # its own recipes (None: the grid's)


@dataclass(frozen=True)
class SweepGrid:
    """The validated grid."""

    task: str
    seeds: tuple[int, ...]
    budgets: tuple[LabelBudget, ...]
    recipes: tuple[str, ...]
    headline_budget: LabelBudget
    rounds: tuple[int, ...]
    settings: dict[str, Any]
    arms: tuple[PretrainArm, ...]

    def arm_rounds(self, arm: PretrainArm) -> tuple[int, ...]:
        """The pretraining budgets (num-rounds) of `arm`."""
        return self.rounds if arm.rounds is None else arm.rounds

    def arm_recipes(self, arm: PretrainArm) -> tuple[str, ...]:
        """The downstream recipes measured on `arm`'s encoder."""
        return self.recipes if arm.recipes is None else arm.recipes

    def run_config(self, seed: int, arm: PretrainArm | None = None, rounds: int = 1,
                   run_dir: str = "runs/latest") -> RunConfig:
        """The validated run config of one pretraining cell (arm None: the shared settings)."""
        values = {**RunConfig().to_mapping(), **self.settings, "task": self.task,
                  "seed": seed, "num-rounds": rounds, "run-dir": run_dir}
        if arm is not None:
            values.update(arm.settings)
        return RunConfig.from_mapping(values)


def load_grid(path: str | Path, overrides: dict[str, str] | None = None) -> SweepGrid:
    """Read and validate a grid file; `overrides` (`--set`) change `[settings]`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: not valid TOML ({err})") from None
    return parse_grid(raw, overrides or {})


def parse_grid(raw: dict[str, Any], overrides: dict[str, str]) -> SweepGrid:
    """Validate a parsed grid (see the module docstring for the format)."""
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"unknown grid key(s) {', '.join(unknown)}; known: {', '.join(GRID_KEYS)}")
    try:
        budgets = tuple(LabelBudget.parse(b) for b in _list(raw, "label-budgets", ["5", "20"]))
        headline = LabelBudget.parse(raw["headline-budget"]) if "headline-budget" in raw \
            else budgets[len(budgets) // 2]
    except BudgetError as err:
        raise GridError(str(err)) from None
    recipes = tuple(_list(raw, "recipes", list(RECIPES)))
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        raise GridError(f"recipes: unknown {bad}; known: {', '.join(RECIPES)}")
    seeds = tuple(int(s) for s in _list(raw, "seeds", [0, 1, 2]))
    rounds = tuple(sorted({int(r) for r in _list(raw, "rounds", [3])}))
    if not seeds or not rounds or min(rounds) < 1 or len(set(seeds)) != len(seeds):
        raise GridError("seeds must be distinct and rounds >= 1, both non-empty")
    settings = {**raw.get("settings", {}), **overrides}
    arms = []
    for name, values in raw.get("pretraining", {}).items():
        if not isinstance(values, dict):
            raise GridError(f"pretraining.{name} must be a table of run settings")
        values = dict(values)
        own_rounds = values.pop("rounds", None)
        own_recipes = values.pop("recipes", None)
        shared = sorted(set(values) & set(SHARED_ONLY) - _same_data_task(raw, name, values))
        if shared:
            raise GridError(f"pretraining.{name} may not set {', '.join(shared)}: every arm "
                            "of a seed must share the split and the downstream recipe")
        if own_rounds is not None:
            if not isinstance(own_rounds, list) or not own_rounds or min(own_rounds) < 0:
                raise GridError(f"pretraining.{name}.rounds must be a non-empty list of "
                                "rounds >= 0")
            own_rounds = tuple(sorted({int(r) for r in own_rounds}))
        if own_recipes is not None:
            if (not isinstance(own_recipes, list) or not own_recipes
                    or any(r not in RECIPES for r in own_recipes)):
                raise GridError(f"pretraining.{name}.recipes must be a non-empty list of "
                                f"recipes ({', '.join(RECIPES)})")
            own_recipes = tuple(own_recipes)
        arms.append(PretrainArm(name=name, settings=values, rounds=own_rounds,
                                recipes=own_recipes))
    if not arms:
        raise GridError("the grid needs at least one [pretraining.NAME] table")
    grid = SweepGrid(task=str(raw.get("task", "mlm")), seeds=seeds, budgets=budgets,
                     recipes=recipes, headline_budget=headline, rounds=rounds,
                     settings=settings, arms=tuple(arms))
    for arm in grid.arms:  # every cell's run config must validate before anything runs
        try:
            grid.run_config(grid.seeds[0], arm, grid.arm_rounds(arm)[-1])
        except ConfigError as err:
            raise GridError(f"pretraining.{arm.name}: {err}") from None
    return grid


def _same_data_task(raw: dict[str, Any], name: str, values: dict[str, Any]) -> set[str]:
    """{"task"} when an arm switches to another objective on the same kind of data (e.g. image
    `rotation` in an `mae` grid: same split, same downstream stage), else the empty set."""
    if "task" not in values:
        return set()
    try:
        ours, theirs = get_task(str(raw.get("task", "mlm"))), get_task(str(values["task"]))
    except ConfigError as err:
        raise GridError(f"pretraining.{name}: {err}") from None
    return {"task"} if ours.data_kind == theirs.data_kind else set()


def _list(raw: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise GridError(f"{key} must be a non-empty list")
    return value
