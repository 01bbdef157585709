"""Time one DP-SGD step of the `mae` task per Opacus grad_sample_mode, against non-private.

Each arm (mode × torch threads) runs in its own Python process, so its peak memory
(`ru_maxrss`, minus the process's RSS just before the first step) is its own. An arm builds the
task's model, wraps it with `PrivacyEngine.make_private` exactly as the client does (Adam,
σ = 1, C = 1) but with a fixed batch (`poisson_sampling=False`) so every timed step sees the
same batch size, runs WARMUP untimed steps, then times STEPS steps of
zero_grad → per-record loss → mean → backward → clip/noise/step.

    .venv/bin/python benchmarks/vision_step_time.py            # every arm, markdown table
    .venv/bin/python benchmarks/vision_step_time.py --arm hooks --threads 1   # one arm, JSON

"ghost" is informational: it needs make_private's criterion wrapper instead of the registry's
plain `per_record_loss`, and Opacus 1.6 has no ghost norm samplers for Conv2d or GroupNorm.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("nodp", "hooks", "functorch", "ew", "ghost")
THREADS = (1, 2)
BATCH = 256
WARMUP = 3
STEPS = 10


class _PassThrough:
    """A "criterion" for ghost mode that returns the per-record losses it is given."""

    reduction = "mean"

    def __call__(self, losses, *_):
        return losses


def run_arm(mode: str, threads: int) -> dict[str, float | str | int]:
    """Median step time (ms) and peak extra memory (MiB) of one arm, in this process."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from common.data.demo_images import load_mnist5k
    from common.run_config import RunConfig
    from common.tasks.mae import build_model, per_record_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, _ = load_mnist5k()
    records = torch.tensor(images[: BATCH * 4])
    model = build_model(RunConfig())
    loader = DataLoader(TensorDataset(records), batch_size=BATCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = None
    if mode != "nodp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="rdp")
            wrapped = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
                max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode,
                **({"criterion": _PassThrough()} if mode == "ghost" else {}))
        model, optimizer, loader = wrapped[0], wrapped[1], wrapped[-1]
        criterion = wrapped[2] if mode == "ghost" else None
    generator = torch.Generator().manual_seed(1)
    batches = [tuple(b) for b in loader]
    baseline_kib = _current_rss_kib()
    times: list[float] = []
    for step in range(WARMUP + STEPS):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses = per_record_loss(model, batch, generator)
        loss = criterion(losses) if criterion is not None else losses.mean()
        loss.backward()
        optimizer.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "threads": threads, "batch": BATCH,
            "median_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times),
            "peak_extra_mib": max(peak_kib - baseline_kib, 0) / 1024}


def _current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=MODES, help="run one arm in this process (JSON out)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.threads)))
        return
    results = []
    for threads in THREADS:
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, __file__, "--arm", mode, "--threads", str(threads)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                print(f"{mode} ({threads} thr) failed: {tail[0]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    import torch

    print(f"\n{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
          f"batch {BATCH}, median of {STEPS} steps after {WARMUP} warm-up\n")
    print("| threads | mode | median step (ms) | fastest step (ms) | × non-private (median) "
          "| peak extra memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for row in results:
        base = next(r for r in results if r["threads"] == row["threads"] and r["mode"] == "nodp")
        print(f"| {row['threads']} | {row['mode']} | {row['median_ms']:.0f} | {row['min_ms']:.0f} | "
              f"{row['median_ms'] / base['median_ms']:.2f} | {row['peak_extra_mib']:.0f} |")


if __name__ == "__main__":
    main()
