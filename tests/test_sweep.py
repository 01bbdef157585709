"""`fedssl sweep` end to end: a real (tiny) federated pretraining run, every arm on the same
labels, one CSV row per cell, resume after an interruption, plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from simulation_runs import ROOT, TINY_RUN, flower_processes, tiny_bert_folder

GRID = """
task = "mlm"
seeds = [0]
label-budgets = ["2", "10%"]
recipes = ["finetune", "probe"]
headline-budget = "2"
rounds = [1]

[settings]
{settings}
num-clients = 2
label-fraction = 0.2

[pretraining.ssl]
noise-multiplier = 0

[pretraining.public]  # the warm-start-only control: public data, no federated rounds
warm-start-steps = 5
rounds = [0]

[pretraining.adapted]  # LoRA on a (tiny) public checkpoint: only the adapters are saved
init = "{init}"
recipes = ["probe"]
"""


def _sweep(grid: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", "sweep", str(grid),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, check=False)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # several pretraining runs and a resume: ~2 min
def test_sweep_runs_every_cell_once_and_resumes(tmp_path: Path):
    settings = {k: v for k, v in TINY_RUN.items() if not k.startswith("prune")}
    settings.pop("label-fraction")
    grid = tmp_path / "grid.toml"
    init = tiny_bert_folder(tmp_path / "public-bert")
    grid.write_text(GRID.format(settings="\n".join(f"{k} = {v}" for k, v in settings.items()),
                                init=init))
    out = tmp_path / "sweep"
    before = flower_processes()

    first = _sweep(grid, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = _rows(out)
    # 2 budgets x (classical + 2 recipes x (scratch, ssl, public) + adapted's probe)
    assert len(rows) == 16
    keys = {(r["budget"], r["arm"], r["recipe"]) for r in rows}
    assert len(keys) == 16
    for budget in ("2/class", "10%"):  # every arm of a cell saw the same labels
        assert len({(r["n_labels"], r["classes_labeled"]) for r in rows
                    if r["budget"] == budget}) == 1
    assert all(0 <= float(r["macro_f1"]) <= 1 for r in rows)
    ssl = [r for r in rows if r["arm"] == "ssl"]
    assert all(r["epsilon"] == "inf" for r in ssl)  # no noise: honestly no finite ε
    run_dir = out / "pretrain" / "ssl-r1-s0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["arms"] == [] and summary["rounds"] == 1  # pretraining only
    public = out / "pretrain" / "public-r0-s0"
    assert json.loads((public / "warm_start.json").read_text())["steps"] == 5
    assert json.loads((public / "summary.json").read_text())["rounds"] == 0
    assert {r["epsilon"] for r in rows if r["arm"] == "public"} == {"0.0"}  # no private data
    for name in ("labels.png", "epsilon.png", "steps.png", "results.md"):
        assert (out / name).stat().st_size > 0
    assert "random-init probe" in (out / "results.md").read_text()
    assert "| adapted | probe |" in (out / "results.md").read_text().split("gain over")[1]

    # An interruption mid-write: the last rows are lost, the last line torn.
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:-3]) + lines[-3][:10])
    second = _sweep(grid, out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "pretraining ssl" not in second.stdout  # its run was complete: not redone
    assert "16 cells, 13 already done" in second.stdout
    again = _rows(out)
    assert len(again) == 16 and {(r["budget"], r["arm"], r["recipe"]) for r in again} == keys
    assert again[:13] == rows[:13]

    assert not flower_processes() - before

    other = tmp_path / "other.toml"  # a different grid may not mix into these results
    other.write_text(grid.read_text().replace('"2", "10%"', '"3", "10%"'))
    refused = _sweep(other, out)
    assert refused.returncode == 1 and "different grid" in refused.stderr


def test_sweep_rejects_a_bad_grid_in_one_line(tmp_path: Path):
    grid = tmp_path / "grid.toml"
    grid.write_text('seeds = [0]\n[pretraining.x]\nlabel-fraction = 0.5\n')
    result = _sweep(grid, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fedssl: error: pretraining.x may not set")
    assert "Traceback" not in result.stderr
    missing = _sweep(tmp_path / "nope.toml", tmp_path / "out")
    assert missing.returncode == 2 and "grid file not found" in missing.stderr


def test_a_sweep_dir_accepts_more_seeds_arms_recipes_or_budgets_but_no_other_change():
    from simulations.sweep_runner import grid_extends

    recorded = {"task": "mlm", "seeds": [0, 1], "budgets": ["1", "5"], "recipes": ["probe"],
                "headline_budget": "5", "rounds": [3], "settings": {"batch-size": 128},
                "pretraining": {"ssl": {"noise-multiplier": 0, "rounds": [3]}}}
    assert grid_extends(recorded, recorded)
    more = {**recorded, "seeds": [0, 1, 2],
            "pretraining": {**recorded["pretraining"], "frozen": {"rounds": [3]}}}
    assert grid_extends(more, recorded)
    assert not grid_extends(recorded, more)  # dropping a seed or an arm is a different grid
    more_recipes = {**recorded, "recipes": ["finetune-es", "probe"]}
    assert grid_extends(more_recipes, recorded) and not grid_extends(recorded, more_recipes)
    more_budgets = {**recorded, "budgets": ["1", "5", "100", "10%"]}
    assert grid_extends(more_budgets, recorded) and not grid_extends(recorded, more_budgets)
    changed_arm = {**recorded, "pretraining": {"ssl": {"noise-multiplier": 1, "rounds": [3]}}}
    changed_shared = {**recorded, "settings": {"batch-size": 64}}
    fewer_budgets = {**recorded, "budgets": ["1"]}
    for other in (changed_arm, changed_shared, fewer_budgets):
        assert not grid_extends(other, recorded)


def test_margin_is_measured_against_the_best_baseline_per_budget():
    from simulations.sweep_plots import margin_table

    def row(seed, arm, recipe, f1, budget="5/class"):
        return {"seed": str(seed), "arm": arm, "recipe": recipe, "budget": budget,
                "rounds": "3" if arm == "dp" else "0", "pretraining": "dp" if arm == "dp" else "",
                "macro_f1": str(f1), "applicable": "True"}

    rows = [row(s, "classical", "classical", 0.40) for s in (0, 1)]
    rows += [row(s, "scratch", "finetune", 0.30) for s in (0, 1)]
    rows += [row(s, "scratch", "probe", 0.45) for s in (0, 1)]  # the best baseline here
    rows += [row(0, "dp", "finetune", 0.50), row(1, "dp", "finetune", 0.48)]
    table = margin_table(rows, ["5/class", "20/class"], {"dp": "3"})
    assert "| dp | finetune | +0.040 (n=2) | n/a |" in table


def test_an_arm_may_switch_objective_only_on_the_same_kind_of_data():
    import pytest

    from simulations.sweep_grid import GridError, load_grid, parse_grid

    images = load_grid(ROOT / "simulations" / "sweeps" / "image-small-budgets.toml")
    tasks = {arm.name: images.run_config(0, arm, 5).task for arm in images.arms}
    assert tasks == {"mae-ssl": "mae", "mae-dp-eps8": "mae", "rotation-ssl": "rotation",
                     "rotation-dp-eps8": "rotation", "rotation-dp-eps3": "rotation",
                     "rotation-dp-eps1": "rotation"}
    with pytest.raises(GridError, match="may not set task"):
        parse_grid({"task": "mlm", "pretraining": {"x": {"task": "rotation"}}}, {})
    with pytest.raises(GridError, match="unknown task"):
        parse_grid({"task": "mae", "pretraining": {"x": {"task": "jigsaw"}}}, {})


def test_every_shipped_grid_is_valid():
    from simulations.sweep_grid import load_grid

    grids = sorted((ROOT / "simulations" / "sweeps").glob("*.toml"))
    assert len(grids) >= 5
    for path in grids:  # each cell's run config validates at load, before anything runs
        grid = load_grid(path)
        assert grid.arms and grid.seeds, path.name


def test_an_arm_may_measure_only_its_own_recipes():
    import pytest

    from simulations.sweep_grid import GridError, parse_grid
    from simulations.sweep_runner import planned_cells

    grid = parse_grid({"task": "mlm", "seeds": [0], "label-budgets": ["1", "5"],
                       "recipes": ["finetune", "probe"],
                       "pretraining": {"big": {"noise-multiplier": 0, "recipes": ["probe"]}}},
                      {})
    arm_recipes = {(c.arm, c.recipe) for c in planned_cells(grid)}
    # the baselines keep the grid's recipes; the arm only its own
    assert arm_recipes == {("classical", "classical"), ("scratch", "finetune"),
                           ("scratch", "probe"), ("big", "probe")}
    with pytest.raises(GridError, match="recipes must be a non-empty list"):
        parse_grid({"pretraining": {"x": {"recipes": ["prob"]}}}, {})


def test_gain_over_public_pairs_each_seed_with_its_own_public_run():
    from simulations.sweep_plots import public_margin_table

    def row(seed, arm, f1, rounds):
        return {"seed": str(seed), "arm": arm, "recipe": "probe", "budget": "5/class",
                "rounds": rounds, "pretraining": arm, "macro_f1": str(f1)}

    rows = [row(0, "public", 0.40, "0"), row(1, "public", 0.50, "0"),
            row(0, "adapted", 0.43, "3"), row(1, "adapted", 0.51, "3"),
            row(0, "adapted", 0.99, "1")]  # a shorter pretraining budget: not the headline
    table = public_margin_table(rows, ["5/class"], {"public": "0", "adapted": "3"})
    assert "| adapted | probe | +0.020 ± 0.010 (n=2) |" in table
