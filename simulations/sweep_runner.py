"""`fedssl sweep`: run a label-efficiency grid, one CSV row per measured cell, resumable.

Pretraining cells are real `fedssl simulate` runs (Flower's simulation engine, Opacus DP-SGD,
the privacy ledger) with `downstream = false`, one RUN_DIR each under SWEEP_DIR/pretrain/.
Evaluation cells then load each run's global model and measure every label budget and recipe
in this process; baselines that need no pretraining (scratch, random-init probe, classical)
are measured once per seed. Every finished cell is appended to SWEEP_DIR/results.csv and
flushed at once; a restarted sweep skips the cells already there, and a pretraining run that
was interrupted continues from its last committed round.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import torch

from common.data.label_budgets import LabelBudget
from common.run_config import RunConfig
from common.run_layout import GLOBAL_MODEL_FILE, SUMMARY_FILE
from common.tasks import get_task, load_federated_state
from server.evaluation.arms import BudgetResult, evaluate_budget
from server.evaluation.downstream_kit import DownstreamKit
from server.evaluation.pipeline import make_kit
from server.evaluation.safetensors_export import load_state
from simulations.sweep_grid import PretrainArm, SweepGrid

COLUMNS = ("task", "seed", "budget", "arm", "pretraining", "rounds", "recipe", "target_epsilon",
           "epsilon", "n_labels", "classes_labeled", "accuracy", "macro_f1",
           "validation_macro_f1", "best_epoch", "seconds", "applicable")
KEY = ("seed", "budget", "arm", "pretraining", "rounds", "recipe")
Say = Callable[[str], None]


class SweepError(RuntimeError):
    """The sweep cannot go on (a failed pretraining run, another grid's SWEEP_DIR)."""


@dataclass(frozen=True)
class Cell:
    """What one CSV row measures (its key) plus the pretraining facts it reports."""

    seed: int
    budget: LabelBudget
    arm: str  # "classical", "scratch", or a pretraining arm's name
    recipe: str
    pretraining: str = ""
    rounds: int = 0
    target_epsilon: float = float("nan")
    epsilon: float = float("nan")

    def key(self) -> tuple[str, ...]:
        return (str(self.seed), self.budget.name, self.arm, self.pretraining, str(self.rounds),
                self.recipe)


def run_sweep(grid: SweepGrid, out: Path, say: Say = print) -> Path:
    """Run every missing cell of `grid` into `out`; returns the CSV path."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    repair_tail(results)
    done = completed_keys(results)
    record = _grid_record(grid)
    existing = out / "grid.json"
    if existing.exists() and not grid_extends(record, json.loads(existing.read_text())):
        raise SweepError(f"{out} holds results of a different grid (see {existing}); use a new "
                         "--out, or the same grid and settings to resume (adding seeds, "
                         "pretraining arms, recipes or label budgets is allowed)")
    existing.write_text(json.dumps(record, indent=2))
    total = sum(1 for _ in planned_cells(grid))
    say(f"[sweep] {total} cells, {len(done)} already done; results in {results}")
    started, measured = time.monotonic(), 0
    for seed in grid.seeds:
        base_config = grid.run_config(seed, run_dir=str(out / "baselines"))
        baselines = [c for c in _baseline_cells(grid, seed) if c.key() not in done]
        if baselines:
            kit = make_kit(base_config, get_task(grid.task).build_model(base_config))
            measured += _measure(kit, None, baselines, base_config, results, say)
        for arm in grid.arms:
            for rounds in grid.arm_rounds(arm):
                cells = [c for c in _arm_cells(grid, seed, arm, rounds) if c.key() not in done]
                if not cells:
                    continue
                config, model, epsilon = pretrain(grid, seed, arm, rounds, out, say)
                cells = [dataclasses.replace(c, epsilon=epsilon) for c in cells]
                kit = make_kit(config, model)
                measured += _measure(kit, kit.encoder_weights, cells, config, results, say)
        elapsed = time.monotonic() - started
        say(f"[sweep] seed {seed} done; {measured} cells measured in {elapsed:.0f}s")
    return results


def planned_cells(grid: SweepGrid) -> Iterator[Cell]:
    """Every cell of the grid, in run order."""
    for seed in grid.seeds:
        yield from _baseline_cells(grid, seed)
        for arm in grid.arms:
            for rounds in grid.arm_rounds(arm):
                yield from _arm_cells(grid, seed, arm, rounds)


def _baseline_cells(grid: SweepGrid, seed: int) -> list[Cell]:
    cells = [Cell(seed, b, "classical", "classical") for b in grid.budgets]
    cells += [Cell(seed, b, "scratch", r) for b in grid.budgets for r in grid.recipes]
    return cells


def _arm_cells(grid: SweepGrid, seed: int, arm: PretrainArm, rounds: int) -> list[Cell]:
    config = grid.run_config(seed, arm, rounds)
    target = math.nan if config.fixed_noise_multiplier is not None else config.target_epsilon
    return [Cell(seed, b, arm.name, r, pretraining=arm.name, rounds=rounds,
                 target_epsilon=target) for b in grid.budgets for r in grid.arm_recipes(arm)]


def pretrain(grid: SweepGrid, seed: int, arm: PretrainArm, rounds: int, out: Path,
             say: Say) -> tuple[RunConfig, torch.nn.Module, float]:
    """The federated SSL model of one pretraining cell (runs `fedssl simulate` if needed)."""
    run_dir = out / "pretrain" / f"{arm.name}-r{rounds}-s{seed}"
    config = grid.run_config(seed, arm, rounds, run_dir=str(run_dir.resolve()))
    config = config.replace(downstream=False)
    summary_file = run_dir / SUMMARY_FILE
    if not summary_file.exists():
        say(f"[sweep] pretraining {arm.name}, {rounds} rounds, seed {seed} → {run_dir}")
        settings = [f"{k}={v}" for k, v in config.to_mapping().items() if k != "run-dir"]
        command = [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir)]
        for setting in settings:
            command += ["--set", setting]
        log = run_dir.parent / f"{run_dir.name}.log"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            code = _run_to_end(command, handle)
        if code != 0 or not summary_file.exists():
            raise SweepError(f"pretraining run {run_dir} failed (exit {code}); see {log}")
    summary = json.loads(summary_file.read_text())
    model = get_task(config.task).build_model(config)
    # Only the federated keys (adapters and head, with `init`) are in the file.
    load_federated_state(model, load_state(run_dir / GLOBAL_MODEL_FILE))
    return config, model, _spent_epsilon(summary["privacy"], run_dir, say)


def _spent_epsilon(privacy: dict[str, object], run_dir: Path, say: Say) -> float:
    """The ε a results row records for a pretraining run: infinite without a DP guarantee
    (reproducible noise), and said out loud when it is only a lower bound."""
    if privacy.get("dp_guarantee") is False:
        say(f"[sweep] {run_dir.name}: no DP guarantee (reproducible noise): ε recorded as inf")
        return math.inf
    if privacy.get("max_epsilon_lower_bound"):
        say(f"[sweep] warning: {run_dir.name}: ε {privacy['max_epsilon']:.3f} is a lower bound "
            "(a node's latest spend may be missing; see its summary.json)")
    return float(privacy["max_epsilon"])  # type: ignore[arg-type]


def _run_to_end(command: list[str], log: IO[str]) -> int:
    """Run `fedssl simulate`; if the sweep is interrupted, let it stop its processes first.

    (subprocess.run would SIGKILL it, leaving its SuperLink and Ray processes orphaned.)
    """
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)  # fedssl simulate stops everything it started
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def _measure(kit: DownstreamKit, weights: dict[str, torch.Tensor] | None, cells: list[Cell],
             config: RunConfig, results: Path, say: Say) -> int:
    for cell in cells:
        result = evaluate_budget(kit, None if cell.arm == "scratch" else weights, cell.budget,
                                 cell.recipe, config)  # config.seed == cell.seed
        append_row(results, cell, result, config.task)
        shown = "n/a" if not result.applicable else f"macro-F1 {result.macro_f1:.3f}"
        say(f"[sweep] seed {cell.seed} {cell.budget.name:>8} {cell.arm:>12} "
            f"{cell.recipe:<12} {shown} ({result.n_labels} labels, {result.seconds:.0f}s)")
    return len(cells)


def append_row(path: Path, cell: Cell, result: BudgetResult, task: str) -> None:
    """Append one row and make it durable before the next cell starts."""
    new = not path.exists()
    row = {**asdict(result), "task": task, "seed": cell.seed, "budget": cell.budget.name,
           "arm": cell.arm, "pretraining": cell.pretraining, "rounds": cell.rounds,
           "recipe": cell.recipe, "target_epsilon": cell.target_epsilon,
           "epsilon": cell.epsilon}
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in COLUMNS})
        handle.flush()
        os.fsync(handle.fileno())


def repair_tail(path: Path) -> None:
    """Cut a torn last line (a crash mid-write) so the next row starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def completed_keys(path: Path) -> set[tuple[str, ...]]:
    """Keys of the rows already in the CSV."""
    if not path.exists():
        return set()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {tuple(r[k] for k in KEY) for r in rows}


def _grid_record(grid: SweepGrid) -> dict[str, object]:
    return {"task": grid.task, "seeds": list(grid.seeds),
            "budgets": [b.name for b in grid.budgets], "recipes": list(grid.recipes),
            "headline_budget": grid.headline_budget.name, "rounds": list(grid.rounds),
            "settings": grid.settings,
            "pretraining": {a.name: {**a.settings, "rounds": list(grid.arm_rounds(a)),
                                     **({} if a.recipes is None else {"recipes": list(a.recipes)})}
                            for a in grid.arms}}


def grid_extends(record: dict[str, object], recorded: dict[str, object]) -> bool:
    """True when `record` is the recorded grid, possibly with more seeds, arms, recipes or label
    budgets: the cells already measured stay valid (same split, labeled pool and shared
    settings; budget selections are nested per seed), and a finished pretraining run is reused
    for the new cells."""
    grown_lists = ("seeds", "recipes", "budgets")  # may gain entries, never lose one
    shared = [k for k in record if k not in (*grown_lists, "pretraining")]
    old_arms, new_arms = recorded.get("pretraining", {}), record["pretraining"]
    return (all(record[k] == recorded.get(k) for k in shared)
            and all(set(recorded.get(k, [])) <= set(record[k])  # type: ignore[call-overload]
                    for k in grown_lists)
            and all(new_arms.get(name) == arm for name, arm in old_arms.items()))  # type: ignore[union-attr]
