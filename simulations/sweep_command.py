"""`fedssl sweep GRID --out DIR`: the label-efficiency study on any grid (thin command)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.run_config import ConfigError, parse_overrides

DEFAULT_GRID = Path(__file__).resolve().parent / "sweeps" / "text-label-efficiency.toml"


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    """Register `fedssl sweep`."""
    sweep = commands.add_parser(
        "sweep", help="label-efficiency grid: pretraining arms x label budgets x seeds → CSV, "
        "plots (resumes where it stopped)")
    sweep.add_argument("grid", nargs="?", default=str(DEFAULT_GRID),
                       help="grid TOML file (default: the shipped text grid; see "
                       "simulations/sweeps/)")
    sweep.add_argument("--out", required=True, help="SWEEP_DIR: results.csv, plots, runs")
    sweep.add_argument("--set", dest="settings", action="append", default=[],
                       metavar="KEY=VALUE", help="override a run setting of every arm")
    sweep.add_argument("--plots-only", action="store_true",
                       help="redraw plots and tables from an existing results.csv")


def sweep_command(args: argparse.Namespace) -> int:
    """Validate the grid, run the missing cells, draw the plots."""
    from simulations.sweep_grid import GridError, load_grid

    try:
        grid = load_grid(args.grid, parse_overrides(args.settings))
    except (GridError, ConfigError) as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 2
    from simulations.sweep_plots import write_plots
    from simulations.sweep_runner import SweepError, run_sweep

    out = Path(args.out).expanduser().resolve()
    results = out / "results.csv"
    if not args.plots_only:
        try:
            results = run_sweep(grid, out, say=lambda line: print(line, flush=True))
        except SweepError as err:
            print(f"fedssl: error: {err}", file=sys.stderr)
            return 1
    if not results.exists():
        print(f"fedssl: error: no results in {results}", file=sys.stderr)
        return 1
    recipes = list(dict.fromkeys(r for arm in grid.arms for r in grid.arm_recipes(arm)))
    recipes = list(grid.recipes) + [r for r in recipes if r not in grid.recipes]
    written = write_plots(results, [b.name for b in grid.budgets], recipes,
                          grid.headline_budget.name, out)
    print("fedssl: wrote " + ", ".join(str(p) for p in written))
    return 0
