"""CPU latency of a run's compressed classifier variants (issue 19 §6), at batch 1 and 32.

Run `fedssl compress RUN_DIR` first; this reads every variant it built
(compressed/variants.json, through server/compression/variants.load_variants, as the command
scores them) and times each on
the first records of the run's own test split (real texts, padded to max-length as the run
encoded them). Per thread count (torch's intra-op threads and each ONNX Runtime session's)
and batch size, the variants are called in turn, REPEATS rounds of one call each after WARMUP
untimed rounds: interleaving spreads any machine load over all variants alike, and the median
of the rounds is reported. One process measures everything. Run it on a quiet machine: the
output records the load average before and after.

    .venv/bin/python benchmarks/compressed_latency.py runs/demo
    .venv/bin/python benchmarks/compressed_latency.py runs/demo --repeats 50 --threads 1 2 \
        --out benchmarks/compressed_latency.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from server.compression.finished_run import FinishedRun, load_finished_run
from server.compression.variants import load_variants

BATCHES = (1, 32)
THREADS = (1, 2)
REPEATS = 30
WARMUP = 3

Call = Callable[[], object]


def interleaved_medians(calls: dict[str, Call], repeats: int = REPEATS, warmup: int = WARMUP,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds per call of each entry, timed in interleaved rounds.

    Each round calls every entry once, in order; `warmup` rounds run untimed first (lazy
    allocation, ONNX Runtime's first-run graph work). `clock` is injectable for tests.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(warmup + repeats):
        for name, call in calls.items():
            start = clock()
            call()
            elapsed = clock() - start
            if round_number >= warmup:
                times[name].append(elapsed * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def variant_calls(run: FinishedRun, threads: int, batch: int) -> dict[str, Call]:
    """One zero-argument call per variant: logits of the first `batch` test records.

    Sets torch's process-wide intra-op threads to `threads` and gives each ONNX Runtime
    session the same count, so both engines get the same cores.
    """
    torch.set_num_threads(threads)
    out = run.run_dir / "compressed"
    if not (out / "results.json").is_file():
        raise SystemExit(f"{out} has no results.json: run `fedssl compress {run.run_dir}` "
                         "first")
    if len(run.test_labels) < batch:
        raise SystemExit(f"the test split has {len(run.test_labels)} records, fewer than "
                         f"batch {batch}")
    ids, mask = (np.ascontiguousarray(t[:batch].numpy()) for t in run.test_inputs)
    variants = load_variants(run.run_dir, run.model, threads)
    # v=variant binds each lambda to its own variant (a bare closure would see the last).
    return {variant.name: (lambda v=variant: v.logits(ids, mask)) for variant in variants}


def latency_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (threads, variant), ms at each batch and speed-up over fp32."""
    batches = sorted({row["batch"] for row in rows})
    by_key = {(row["threads"], row["variant"], row["batch"]): row["ms"] for row in rows}
    head = " | ".join(f"batch {b} ms | speed-up b{b}" for b in batches)
    lines = [f"| threads | variant | {head} |",
             "|---:|---|" + "---:|---:|" * len(batches)]
    for threads in sorted({row["threads"] for row in rows}):
        names = dict.fromkeys(row["variant"] for row in rows if row["threads"] == threads)
        for variant in [v for v in names if (threads, v, batches[0]) in by_key]:
            cells = []
            for b in batches:
                ms, base = by_key[(threads, variant, b)], by_key[(threads, "fp32", b)]
                cells.append(f"{ms:.2f} | {base / ms:.2f}×")
            lines.append(f"| {threads} | {variant} | {' | '.join(cells)} |")
    return "\n".join(lines)


def measure(run: FinishedRun, threads: tuple[int, ...], batches: tuple[int, ...],
            repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Every (threads, batch) cell: interleaved medians of all variants."""
    rows = []
    for count in threads:
        for batch in batches:
            print(f"threads {count}, batch {batch}: {warmup} + {repeats} rounds", flush=True)
            medians = interleaved_medians(variant_calls(run, count, batch), repeats, warmup)
            rows += [{"threads": count, "batch": batch, "variant": name, "ms": ms}
                     for name, ms in medians.items()]
    return rows


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and how busy it was)."""
    import onnxruntime

    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a RUN_DIR that `fedssl compress` has processed")
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--out", help="also write the Markdown (and a .json next to it) here")
    args = parser.parse_args()
    run = load_finished_run(args.run_dir)
    before = machine()
    rows = measure(run, tuple(args.threads), tuple(args.batches), args.repeats, args.warmup)
    after_load = os.getloadavg()
    text = (f"# Compressed variants: CPU latency\n\nRun `{run.run_dir}`; median of "
            f"{args.repeats} interleaved rounds after {args.warmup} warm-up rounds; "
            f"{before['cpu_count']} CPUs, torch {before['torch']}, onnxruntime "
            f"{before['onnxruntime']}; load average before {before['load_average']}, after "
            f"{after_load}.\n\n{latency_table(rows)}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"machine": before, "load_average_after": after_load, "repeats": args.repeats,
             "warmup": args.warmup, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
