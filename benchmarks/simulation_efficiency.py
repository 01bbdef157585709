"""Simulation efficiency: per-round wall time vs local training, time to first round, bytes.

Runs the real `fedssl simulate` (Flower's Ray simulation engine, one CPU per ClientApp) at each
client count with tiny local work, with `FEDSSL_TIMING_LOG` set so every ClientApp message
writes its phase timings (client/message_timing.py). Per round it reports the server's round
wall time (`wall_seconds` in metrics.jsonl: model out → all replies aggregated and recorded),
Σ DP-SGD time over that round's clients, and the goal's ratio wall ÷ (Σ training ÷ cores).
Time to first round is from launching `fedssl simulate` to round 1's line in metrics.jsonl.

    .venv/bin/python benchmarks/simulation_efficiency.py                  # 10, 100, 1000 clients
    .venv/bin/python benchmarks/simulation_efficiency.py --clients 100 --rounds 3
    .venv/bin/python benchmarks/simulation_efficiency.py --bytes-only     # table (c) only
    .venv/bin/python benchmarks/simulation_efficiency.py --clients 100 --local-steps 10 --batch-size 64

At most `--per-round` clients train per round (`fraction-train` = per-round ÷ clients), so 1000
clients means 1000 simulated nodes of which 100 are sampled each round. σ is fixed
(`noise-multiplier=1.0`) unless `--auto-sigma`: calibrating σ to a target ε costs seconds per
node in its first round (pure-Python RDP; see benchmarks/README.md) and is measured separately.

Bytes (table c) are the protobuf size of Flower's message (`message_to_proto(...).ByteSize()`),
i.e. what travels per node per round before gRPC framing: the server's instruction (global
weights + round config) and the node's reply (clipped update, metrics, its whole ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_LOCAL_WORK = {"local-steps": 2, "batch-size": 16, "max-records": 20000,
                   "label-fraction": 0.01, "finetune-epochs": 1, "prune-recover-epochs": 0}


def run_simulation(clients: int, per_round: int, rounds: int, auto_sigma: bool,
                   local_work: dict | None = None) -> dict:
    """One `fedssl simulate` run; its per-round timings and time to first round."""
    work = Path(tempfile.mkdtemp(prefix="fedssl-bench-"))
    run_dir, timing_log = work / "run", work / "timings.jsonl"
    settings = {**TINY_LOCAL_WORK, **(local_work or {}), "num-clients": clients,
                "num-rounds": rounds,
                "fraction-train": min(1.0, per_round / clients)}
    if not auto_sigma:
        settings["noise-multiplier"] = 1.0
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "FEDSSL_TIMING_LOG": str(timing_log), "PYTHONPATH": str(ROOT)}
    arrivals: list[float] = []
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=_watch_rounds, args=(run_dir / "metrics.jsonl", process,
                                                           started, arrivals), daemon=True)
    watcher.start()
    output = process.communicate()[0]
    total = time.monotonic() - started
    watcher.join(timeout=5)
    if process.returncode != 0:
        raise RuntimeError(f"fedssl simulate failed ({process.returncode}):\n{output[-3000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    messages = [json.loads(line) for line in timing_log.read_text().splitlines()]
    cores = os.cpu_count() or 1
    per_round = []
    for line in metrics:
        mine = [m for m in messages if m["round"] == line["round"]]
        train = sum(m["train_s"] for m in mine)
        handled = sum(m["end"] - m["start"] for m in mine)
        per_round.append({
            "round": line["round"], "clients": len(mine), "wall_s": line["wall_seconds"],
            "train_sum_s": train, "message_sum_s": handled,
            "sigma_sum_s": sum(m.get("sigma_s", 0.0) for m in mine),
            "ratio": line["wall_seconds"] / (train / cores) if train else float("nan"),
            "workers": len({m["pid"] for m in mine}),
        })
    return {"clients": clients, "per_round": per_round, "total_s": total,
            "first_round_s": arrivals[0] if arrivals else float("nan"),
            "load": os.getloadavg()[0], "work_dir": str(work)}


def _watch_rounds(path: Path, process: subprocess.Popen, started: float,
                  arrivals: list[float]) -> None:
    """Record when each metrics.jsonl line appears (seconds since launch)."""
    seen = 0
    while process.poll() is None:
        if path.exists():
            lines = path.read_text().count("\n")
            arrivals.extend([time.monotonic() - started] * (lines - seen))
            seen = max(seen, lines)
        time.sleep(0.2)


def message_bytes(rounds: int) -> list[dict]:
    """Protobuf bytes of one node's instruction and reply messages, round by round."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.common.serde import message_to_proto
    from flwr.supercore.task_identity import TaskIdentity

    import client.app as client_app
    from common.run_config import RunConfig
    from common.tasks import get_task

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    rows = []
    for task_name in ("mlm", "mae"):
        config = RunConfig(task=task_name, num_clients=10, noise_multiplier="1.0",
                           **{k.replace("-", "_"): v for k, v in TINY_LOCAL_WORK.items()})
        task = get_task(task_name)
        torch.manual_seed(0)
        arrays = ArrayRecord(task.build_model(config).state_dict())
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0,
                          "num-partitions": 10}, state=RecordDict(),
                          run_config=config.to_mapping())
        with tempfile.TemporaryDirectory() as state_dir:
            for server_round in range(1, rounds + 1):
                instruction = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({
                    "server-round": server_round, "sim-state-dir": state_dir,
                    "public-inputs-sha256": task.public_inputs_sha256(config)})}),
                    dst_node_id=7, message_type="train")
                reply = client_app.train(instruction, context)
                ledger = reply.content["fedssl"]["ledger"]
                rows.append({"task": task_name, "round": server_round,
                             "down": message_to_proto(instruction).ByteSize(),
                             "up": message_to_proto(reply).ByteSize(),
                             "ledger": sum(len(e) for e in ledger)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--auto-sigma", action="store_true")
    parser.add_argument("--bytes-only", action="store_true")
    parser.add_argument("--local-steps", type=int, default=TINY_LOCAL_WORK["local-steps"],
                        help="DP-SGD steps per client per round (more = less overhead share)")
    parser.add_argument("--batch-size", type=int, default=TINY_LOCAL_WORK["batch-size"],
                        help="expected DP-SGD batch per step")
    args = parser.parse_args()
    local_work = {"local-steps": args.local_steps, "batch-size": args.batch_size}
    import torch

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    if not args.bytes_only:
        print("| clients | trained per round | round | wall (s) | Σ DP-SGD (s) | Σ message (s) "
              "| wall ÷ (Σ DP-SGD ÷ cores) | time to first round (s) | whole run (s) | load |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for clients in args.clients:
            result = run_simulation(clients, args.per_round, args.rounds, args.auto_sigma,
                                    local_work)
            print(json.dumps(result), file=sys.stderr)
            for r in result["per_round"]:
                print(f"| {clients} | {r['clients']} | {r['round']} | {r['wall_s']:.1f} | "
                      f"{r['train_sum_s']:.1f} | {r['message_sum_s']:.1f} | {r['ratio']:.2f} | "
                      f"{result['first_round_s']:.0f} | {result['total_s']:.0f} | "
                      f"{result['load']:.1f} |", flush=True)
        print()
    rows = message_bytes(args.rounds + 1)
    print("| task | round | server → node (bytes) | node → server (bytes) | of which ledger JSON |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['round']} | {r['down']:,} | {r['up']:,} | {r['ledger']:,} |")


if __name__ == "__main__":
    main()
