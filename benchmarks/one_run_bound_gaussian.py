"""How close does the one-run audit get to the true ε of a Gaussian mechanism, and is it sound?

The idealised setting of Steinke, Nasr & Jagielski's experiments: m canaries, each with a fair
coin S_i ∈ {0, 1}; the release is y_i = S_i + N(0, σ²) per canary (sensitivity 1), i.e. m
Gaussian mechanisms side by side, each (ε, δ)-DP with respect to its own coin, with σ set from
the target ε by the exact analytic Gaussian (Balle & Wang 2018, `dp_accounting`). The auditor
scores canary i by y_i, guesses "in" for the k highest and "out" for the k lowest, and the bound
of `common/privacy/one_run_bound.py` is taken over a grid of k with the union bound it pays for
choosing k after looking.

Reported per (m, ε): mean / sd / min / max of the lower bound over the trials, how many trials
went above the true ε (a sound bound should do so in at most a β fraction, and in practice
never), and the ceiling, the bound that perfect guesses on the whole grid would give (no audit
at this m can certify more). Writes a markdown table with the command, machine and date.

    .venv/bin/python benchmarks/one_run_bound_gaussian.py      # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dp_accounting
import numpy as np
import scipy
from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.privacy.one_run_bound import best_lower_bound, epsilon_lower_bound

DEFAULT_OUT = Path(__file__).resolve().parent / "one_run_bound_gaussian.md"
# Guesses as a fraction of m (half "in" at the top, half "out" at the bottom): a coarse grid,
# since every extra pair divides β further.
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Values the paper prints, (m, r, v, δ, β) -> ε (arXiv:2305.08846v1; transcribed by a
# third-party repository, the PDF was not readable here).
PAPER_VALUES = (
    ("Appendix D worked example", (1000, 100, 75, 1e-4, 0.05), 0.673),
    ("§7, Fig. 11", (100_000, 1510, 1439, 1e-5, 0.05), 2.675),
)


def symmetric_grid(m: int) -> list[tuple[int, int]]:
    """(k, k) pairs, k ≈ fraction·m/2 for each guess fraction; at least one guess each side."""
    ks = dict.fromkeys(max(1, round(f * m / 2)) for f in GUESS_FRACTIONS)
    return [(k, k) for k in ks]


def run_cell(m: int, epsilon: float, delta: float, beta: float, trials: int,
             rng: np.random.Generator) -> dict[str, float]:
    """All trials of one (m, ε) cell."""
    sigma = float(dp_accounting.get_sigma_gaussian(epsilon, delta))
    true_eps = float(dp_accounting.get_epsilon_gaussian(sigma, delta))
    pld_eps = from_gaussian_mechanism(
        standard_deviation=sigma, sensitivity=1.0,
        value_discretization_interval=1e-4).get_epsilon_for_delta(delta)
    grid = symmetric_grid(m)
    bounds, guesses = [], []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        scores = included + sigma * rng.standard_normal(m)
        bound, k_pos, k_neg = best_lower_bound(scores, included, delta, beta, grid)
        bounds.append(bound)
        guesses.append(k_pos + k_neg)
    r_max = max(k_pos + k_neg for k_pos, k_neg in grid)
    ceiling = epsilon_lower_bound(r_max, r_max, m, delta, beta / len(grid))
    values = np.array(bounds)
    return {"m": m, "epsilon": epsilon, "sigma": sigma, "true_eps": true_eps,
            "pld_eps": float(pld_eps), "mean": float(values.mean()), "sd": float(values.std()),
            "min": float(values.min()), "max": float(values.max()),
            "above": int(np.sum(values > true_eps)), "ceiling": ceiling,
            "median_r": float(np.median(guesses)), "grid": len(grid)}


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def markdown(rows: list[dict[str, float]], args: argparse.Namespace, started: str,
             load_before: str, load_after: str, seconds: float) -> str:
    # Every parameter spelled out, so the command reruns this table even if defaults change.
    words = [".venv/bin/python", "benchmarks/one_run_bound_gaussian.py",
             "--canaries", *map(str, args.canaries), "--epsilons", *map(str, args.epsilons),
             "--delta", str(args.delta), "--beta", str(args.beta),
             "--trials", str(args.trials), "--seed", str(args.seed)]
    if args.out != DEFAULT_OUT:
        words += ["--out", str(args.out)]
    command = " ".join(shlex.quote(word) for word in words)
    note = f"{args.note} " if args.note else ""
    lines = [
        "# One-run ε lower bound on a Gaussian mechanism (`one_run_bound_gaussian.py`)",
        "",
        ("What: the idealised audit of Steinke, Nasr & Jagielski (NeurIPS 2023): m canaries, "
        "fair coin S_i each, release y_i = S_i + N(0, σ²), score = y_i, σ from the target ε at "
        f"δ = {args.delta:g} by the exact analytic Gaussian (Balle & Wang 2018). Guesses: the "
        "k highest \"in\", the k lowest \"out\", k over the grid of guess fractions "
        f"{GUESS_FRACTIONS} of m, the best k paid for with a union bound (β / |grid|), "
        f"β = {args.beta:g}, {args.trials} trials per cell. `true ε (PLD)` re-derives ε from σ "
        "with the PLD accountant as a cross-check. `ceiling`: the bound if every guess at "
        "the largest r of the grid were right; no audit with m canaries can certify more. "
        "`> true ε`: trials whose bound exceeded the true ε (soundness: at most a β fraction; "
        "expected 0)."),
        "",
        "```bash",
        f"{command}",
        "```",
        "",
        (f"Measured {started} on {machine()}; load average (1/5/15 min) {load_before} "
        f"before, {load_after} after; {seconds:.0f} s wall. {note}The timing depends "
        "on load, the figures do not (fixed seed)."),
        "",
        ("| m | true ε | σ | true ε (PLD) | mean bound | sd | min | max | > true ε | "
        "median r | ceiling | mean / true ε |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['m']} | {row['true_eps']:.3f} | {row['sigma']:.3f} | {row['pld_eps']:.3f} "
            f"| {row['mean']:.3f} | {row['sd']:.3f} | {row['min']:.3f} | {row['max']:.3f} "
            f"| {row['above']}/{args.trials} | {row['median_r']:.0f} | {row['ceiling']:.3f} "
            f"| {row['mean'] / row['true_eps']:.2f} |")
    lines += [
        "",
        ("Values the paper prints, recomputed with `epsilon_lower_bound` (inputs m, r, v, δ, "
        "β; the pins were transcribed by a third-party repository, the PDF was not readable "
        "from this machine):"),
        "",
        "| where (arXiv:2305.08846v1) | m | r | v | δ | β | printed ε | this implementation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for where, (m, r, v, delta, beta), printed in PAPER_VALUES:
        ours = epsilon_lower_bound(r, v, m, delta, beta)
        lines.append(f"| {where} | {m} | {r} | {v} | {delta:g} | {beta:g} | {printed} "
                     f"| {ours:.4f} |")
    lines += [
        "",
        ("The paper also plots this idealised Gaussian setting; its curves could not be read "
        "from here, so they are not compared: the printed values above are the published "
        "check."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canaries", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--note", default="", help="machine context for the report, e.g. "
                        "'Shared machine.' (ends with a full stop; left out of the command)")
    args = parser.parse_args(argv)

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before, clock = loadavg(), time.perf_counter()
    rows = []
    for m in args.canaries:
        for epsilon in args.epsilons:
            rng = np.random.default_rng([args.seed, m, round(1000 * epsilon)])
            row = run_cell(m, epsilon, args.delta, args.beta, args.trials, rng)
            rows.append(row)
            print(f"m={m:>6} ε={row['true_eps']:.3f}: mean {row['mean']:.3f} max "
                  f"{row['max']:.3f} above {row['above']} ceiling {row['ceiling']:.3f}",
                  flush=True)
    seconds = time.perf_counter() - clock
    args.out.write_text(markdown(rows, args, started, load_before, loadavg(), seconds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
