"""Plots and tables of a sweep's results.csv: mean and spread over seeds, every arm shown.

* `labels.png`   macro-F1 (top) and accuracy (bottom) vs label budget, one panel per recipe,
                 at the largest pretraining budget; baselines in every panel.
* `epsilon.png`  macro-F1 vs the ε the clients actually spent, at the headline budget.
* `steps.png`    macro-F1 vs pretraining rounds, at the headline budget.
* `results.md`   the same numbers as tables (mean ± standard deviation, seeds counted).
Error bars are ± one standard deviation over seeds. Nothing here selects on test numbers.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Row = dict[str, str]
Line = tuple[str, str, str]  # (arm, rounds, recipe)


def read_rows(path: Path) -> list[Row]:
    """The CSV's applicable rows."""
    with open(path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["applicable"] == "True"]


def aggregate(rows: list[Row], metric: str) -> dict[tuple[Line, str], tuple[float, float, int]]:
    """(line, budget) → (mean, std, seeds) of `metric` over seeds."""
    values: dict[tuple[Line, str], list[float]] = defaultdict(list)
    for r in rows:
        values[((r["arm"], r["rounds"], r["recipe"]), r["budget"])].append(float(r[metric]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in values.items()}


def largest_rounds(rows: list[Row]) -> dict[str, str]:
    """Each pretraining arm's largest pretraining budget (what the headline plots show)."""
    found: dict[str, int] = {}
    for r in rows:
        if r["pretraining"]:
            found[r["arm"]] = max(found.get(r["arm"], 0), int(r["rounds"]))
    return {arm: str(n) for arm, n in found.items()}


def _lines_for(rows: list[Row], recipe: str, rounds: dict[str, str]) -> list[Line]:
    """Baselines first (classical, scratch/random probe), then the pretraining arms."""
    lines: list[Line] = [("classical", "0", "classical"), ("scratch", "0", recipe)]
    return lines + [(a, rounds[a], recipe) for a in sorted(rounds)]


def _label(line: Line) -> str:
    arm, rounds, recipe = line
    if arm == "classical":
        return "classical baseline"
    if arm == "scratch":
        return "random-init probe" if recipe == "probe" else "scratch"
    return f"{arm} ({rounds} rounds)"


def write_plots(results: Path, budgets: list[str], recipes: list[str], headline: str,
                out: Path) -> list[Path]:
    """Write labels.png, epsilon.png, steps.png and results.md next to the CSV."""
    rows = read_rows(results)
    rounds = largest_rounds(rows)
    written = [_labels_plot(rows, budgets, recipes, rounds, out / "labels.png"),
               _epsilon_plot(rows, recipes, headline, rounds, out / "epsilon.png"),
               _steps_plot(rows, recipes, headline, out / "steps.png")]
    (out / "results.md").write_text(results_tables(rows, budgets, recipes, rounds))
    return [*written, out / "results.md"]


def _labels_plot(rows: list[Row], budgets: list[str], recipes: list[str],
                 rounds: dict[str, str],
                 path: Path) -> Path:
    fig, axes = plt.subplots(2, len(recipes), figsize=(5 * len(recipes), 8), squeeze=False)
    for row, metric in enumerate(("macro_f1", "accuracy")):
        stats = aggregate(rows, metric)
        for col, recipe in enumerate(recipes):
            ax = axes[row][col]
            for line in _lines_for(rows, recipe, rounds):
                points = [(i, stats[(line, b)]) for i, b in enumerate(budgets)
                          if (line, b) in stats]
                if points:
                    x = [p[0] for p in points]
                    ax.errorbar(x, [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                                marker="o", capsize=3, label=_label(line))
            ax.set_xticks(range(len(budgets)), budgets)
            ax.set_title(f"{recipe}: {metric.replace('_', '-')}")
            ax.set_xlabel("labels (per class, or share of the pool)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def _epsilon_plot(rows: list[Row], recipes: list[str], headline: str, rounds: dict[str, str],
                  path: Path) -> Path:
    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 4), squeeze=False)
    for col, recipe in enumerate(recipes):
        ax = axes[0][col]
        picked = [r for r in rows if r["budget"] == headline
                  and r["rounds"] == rounds.get(r["arm"], "0")
                  and r["recipe"] in (recipe, "classical")]
        by_arm: dict[str, list[Row]] = defaultdict(list)
        for r in picked:
            by_arm[r["arm"]].append(r)
        points, references = [], 0
        for arm, arm_rows in sorted(by_arm.items()):
            scores = [float(r["macro_f1"]) for r in arm_rows]
            eps = np.mean([float(r["epsilon"]) for r in arm_rows]) if arm_rows[0]["pretraining"] \
                else math.nan
            if math.isfinite(eps):
                points.append((eps, float(np.mean(scores)), float(np.std(scores)), arm))
            else:  # baselines and non-private arms: no finite ε to place them at
                line = (arm, rounds.get(arm, "0"), recipe)
                _reference_line(ax, float(np.mean(scores)), references, _label(line) + (
                    "" if arm in ("classical", "scratch") else " (no finite ε)"))
                references += 1
        for index, (eps, f1, spread, arm) in enumerate(sorted(points)):
            ax.errorbar(eps, f1, yerr=spread, fmt="o", capsize=3, color=f"C{index % 10}")
            ax.annotate(arm, (eps, f1), fontsize=8, xytext=(4, 4), textcoords="offset points")
        _label_panel(ax, "ε spent per client (RDP, max over clients)", headline, recipe)
    return _save(fig, path)


def _steps_plot(rows: list[Row], recipes: list[str], headline: str, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 4), squeeze=False)
    stats = aggregate(rows, "macro_f1")
    for col, recipe in enumerate(recipes):
        ax = axes[0][col]
        for index, line in enumerate((("classical", "0", "classical"), ("scratch", "0", recipe))):
            if (line, headline) in stats:
                _reference_line(ax, stats[(line, headline)][0], index, _label(line))
        for arm in sorted({r["arm"] for r in rows if r["pretraining"]}):
            pts = sorted((int(line[1]), v[0]) for (line, b), v in stats.items()
                         if line[0] == arm and line[2] == recipe and b == headline)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=arm)
        _label_panel(ax, "pretraining rounds", headline, recipe)
    return _save(fig, path)


def _reference_line(ax: plt.Axes, y: float, index: int, label: str) -> None:
    """A horizontal line for an arm without an x value; each in its own grey and dash."""
    styles = ("--", ":", "-.", (0, (5, 1)))
    ax.axhline(y, color=("0.1", "0.35", "0.55", "0.7")[index % 4],
               linestyle=styles[index % len(styles)], linewidth=1.4, label=label)


def _label_panel(ax: plt.Axes, xlabel: str, headline: str, recipe: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"macro-F1 at {headline}")
    ax.set_title(recipe)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_tables(rows: list[Row], budgets: list[str], recipes: list[str],
                   rounds: dict[str, str]) -> str:
    """Markdown: one table per metric, one row per (arm, recipe), one column per budget."""
    parts = []
    for metric in ("macro_f1", "accuracy"):
        stats = aggregate(rows, metric)
        lines = [("classical", "0", "classical")]
        for recipe in recipes:
            lines += _lines_for(rows, recipe, rounds)[1:]
        head = "| arm | recipe | " + " | ".join(budgets) + " |"
        table = [f"### {metric.replace('_', '-')} (mean ± sd over seeds, n = seeds)", "",
                 head, "|" + "---|" * (len(budgets) + 2)]
        for line in lines:
            cells = []
            for b in budgets:
                s = stats.get((line, b))
                cells.append("n/a" if s is None else f"{s[0]:.3f} ± {s[1]:.3f} (n={s[2]})")
            table.append(f"| {_label(line)} | {line[2]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(table))
    parts.append(margin_table(rows, budgets, rounds))
    if PUBLIC_ARM in rounds:
        parts.append(public_margin_table(rows, budgets, rounds))
    return "\n\n".join(parts) + "\n"


def margin_table(rows: list[Row], budgets: list[str], rounds: dict[str, str]) -> str:
    """Markdown: each pretraining arm's macro-F1 minus the best baseline (the higher mean of
    the classical baseline and scratch under any recipe), per budget: the study's goal is a
    margin of at least +0.05 for a DP arm."""
    stats = aggregate(rows, "macro_f1")
    recipes = sorted({r["recipe"] for r in rows if r["pretraining"]})
    table = ["### macro-F1 margin over the best baseline (mean over seeds; goal: ≥ +0.050)",
             "", "| arm | recipe | " + " | ".join(budgets) + " |",
             "|" + "---|" * (len(budgets) + 2)]
    for arm in sorted(rounds):
        for recipe in recipes:
            cells = []
            for b in budgets:
                baselines = [v[0] for (line, budget), v in stats.items()
                             if budget == b and line[0] in ("classical", "scratch")]
                s = stats.get(((arm, rounds[arm], recipe), b))
                cells.append("n/a" if s is None or not baselines
                             else f"{s[0] - max(baselines):+.3f} (n={s[2]})")
            table.append(f"| {arm} | {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(table)


PUBLIC_ARM = "public"  # the grid arm that is the public checkpoint with no federated rounds


def public_margin_table(rows: list[Row], budgets: list[str], rounds: dict[str, str]) -> str:
    """Markdown: each pretraining arm's macro-F1 minus the `public` arm's under the same recipe
    (what the private records add on top of the public encoder), with the seed spread of the
    paired differences."""
    by_key = {(r["arm"], r["recipe"], r["budget"], r["seed"]): float(r["macro_f1"])
              for r in rows if r["arm"] == PUBLIC_ARM or r["rounds"] == rounds.get(r["arm"])}
    recipes = sorted({r["recipe"] for r in rows if r["arm"] == PUBLIC_ARM})
    table = ["### macro-F1 gain over `public` (same recipe; mean ± sd of per-seed differences)",
             "", "| arm | recipe | " + " | ".join(budgets) + " |",
             "|" + "---|" * (len(budgets) + 2)]
    for arm in sorted(a for a in rounds if a != PUBLIC_ARM):
        for recipe in recipes:
            cells = []
            for b in budgets:
                diffs = [v - by_key[(PUBLIC_ARM, recipe, b, seed)]
                         for (a, rc, bb, seed), v in by_key.items()
                         if (a, rc, bb) == (arm, recipe, b)
                         and (PUBLIC_ARM, recipe, b, seed) in by_key]
                cells.append("n/a" if not diffs else
                             f"{np.mean(diffs):+.3f} ± {np.std(diffs):.3f} (n={len(diffs)})")
            table.append(f"| {arm} | {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(table)
