"""Secure aggregation cost: round wall time and bytes per node, with and without SecAgg+.

(a) Round time: the real `fedssl simulate` (Flower's Ray engine) at 5 and 10 clients, with
    `secure-aggregation` false and true, tiny local work, `downstream=false`; the mean of
    `wall_seconds` (metrics.jsonl) over rounds 2.. (round 1 includes Ray's start-up).
(b) Bytes: every message of one round, as Flower serialises it
    (`message_to_proto(...).ByteSize()`), for the run's model: without SecAgg+ one instruction
    (weights + config) and one reply (Δ float32 + metrics + ledger) per node; with SecAgg+ the
    four protocol stages, run in process through Flower's real SecAggPlusWorkflow and
    secaggplus_mod (server/secure_aggregation.py, client/secure_aggregation.py) with a stand-in
    train function that replies with a clipped random Δ of the model's shapes.

    .venv/bin/python benchmarks/secure_aggregation.py                      # both tables
    .venv/bin/python benchmarks/secure_aggregation.py --bytes-only
    .venv/bin/python benchmarks/secure_aggregation.py --clients 5 10 --rounds 4
    .venv/bin/python benchmarks/secure_aggregation.py --clients 10 --set init=minilm

Writes benchmarks/secure_aggregation.json and .md. With `--set KEY=VALUE` (run settings over
the TINY ones, e.g. `init=minilm`: LoRA adapter updates of the public MiniLM) it appends the
run, its settings and /proc/loadavg before and after, to both files instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = {"max-records": 4000, "local-steps": 4, "batch-size": 32, "label-fraction": 0.05,
        "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
        "noise-multiplier": 1.0, "downstream": "false"}


def round_times(clients: int, rounds: int, secure: bool, extra: dict | None = None) -> dict:
    """One `fedssl simulate`; per-round wall seconds from metrics.jsonl."""
    run_dir = Path(tempfile.mkdtemp(prefix="fedssl-secagg-bench-")) / "run"
    settings = {**TINY, **(extra or {}), "num-clients": clients, "num-rounds": rounds,
                "secure-aggregation": str(secure).lower()}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    result = subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--out",
                             str(run_dir), *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    walls = [line["wall_seconds"] for line in lines]
    return {"clients": clients, "secure_aggregation": secure, "round_seconds": walls,
            "mean_after_first": statistics.fmean(walls[1:]) if len(walls) > 1 else walls[0]}


def round_bytes(clients: int, extra: dict | None = None) -> dict:
    """Bytes of one round's messages, with and without SecAgg+, for the TINY model (or the
    model `extra` settings name)."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, RecordDict
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.common.serde import message_to_proto, recorddict_from_proto, recorddict_to_proto
    from flwr.supercore.task_identity import TaskIdentity

    from client.secure_aggregation import secure_aggregation_mod
    from common.model_updates import clip_to_bound
    from common.protocol import STATUS_TRAINED, ClientReply, RoundInstruction
    from common.run_config import RunConfig
    from common.tasks import federated_state, get_task
    from server.federation_setup import round_instruction
    from server.flower_internals import DelegatingGrid
    from server.ledger_sync import LedgerCoverage
    from server.secure_aggregation import SecureAggregationRounds

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    config = RunConfig.from_mapping({**TINY, **(extra or {}),
                                     "num-clients": clients, "secure-aggregation": True})
    task = get_task(config.task)
    state = federated_state(task.build_model(config))
    metrics = {"num-examples": 100, "epsilon": 1.0, "noise-multiplier": 1.0,
               "sample-rate": 0.1, "local-steps": 4, "update-norm": 1.0, "delta": 1e-5,
               "max-epsilon": 8.0}
    ledger: list[str] = []  # the same in both paths (a real entry adds ~600 bytes to each)

    def reply_for(msg: Message) -> Message:
        gen = torch.Generator().manual_seed(msg.metadata.dst_node_id)
        delta = clip_to_bound({k: torch.randn(v.shape, generator=gen) for k, v in state.items()},
                              config.update_clip_norm)
        reply = ClientReply(status=STATUS_TRAINED, node="n", ledger=ledger, metrics=metrics,
                            arrays=ArrayRecord(delta))
        return Message(reply.to_record_dict(), reply_to=msg)

    size = {"down": 0, "up": 0}
    ids = itertools.count(1)

    class Loopback(DelegatingGrid):
        def __init__(self) -> None:
            self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                        run_config={"secure-aggregation": True})
                             for n in range(1, clients + 1)}

        def get_node_ids(self):  # type: ignore[no-untyped-def]
            return list(self.contexts)

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            replies = []
            for msg in messages:
                size["down"] += message_to_proto(msg).ByteSize()
                node = msg.metadata.dst_node_id
                incoming = Message(recorddict_from_proto(recorddict_to_proto(msg.content)),
                                   dst_node_id=node, message_type=msg.metadata.message_type)
                incoming.metadata.__dict__["_message_id"] = f"m{next(ids)}"
                out = secure_aggregation_mod(incoming, self.contexts[node],
                                             lambda m, c: reply_for(m))
                size["up"] += message_to_proto(out).ByteSize()
                replies.append(Message(recorddict_from_proto(recorddict_to_proto(out.content)),
                                       reply_to=incoming))
            return replies

    rounds = SecureAggregationRounds(config, lambda record, new: None, LedgerCoverage(), None,
                                     round_instruction(config, task, "run", Path("/tmp")))
    rounds.run_round(Loopback(), 1, state)
    assert RECORD_KEY_CONFIGS and Key  # the protocol's own records were on the wire
    plain_down = message_to_proto(Message(RecordDict(
        {"arrays": ArrayRecord(state), "config": RoundInstruction(server_round=1).to_config_record()}),
        dst_node_id=1, message_type="train")).ByteSize()
    instruction = Message(RecordDict(), dst_node_id=1, message_type="train")
    plain_up = message_to_proto(reply_for(instruction)).ByteSize()
    params = sum(v.numel() for v in state.values())
    return {"clients": clients, "parameters": params,
            "plain_per_node": {"down": plain_down, "up": plain_up},
            "secagg_per_node": {"down": size["down"] // clients, "up": size["up"] // clients}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytes-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run setting over the TINY ones; appends to the outputs")
    args = parser.parse_args()
    if args.set:
        append_run(args, dict(item.split("=", 1) for item in args.set))
        return
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                     "bytes": [round_bytes(n) for n in args.clients], "times": []}
    if not args.bytes_only:
        for clients in args.clients:
            for secure in (False, True):
                results["times"].append(round_times(clients, args.rounds, secure))
                print(json.dumps(results["times"][-1]), flush=True)
    (ROOT / "benchmarks" / "secure_aggregation.json").write_text(json.dumps(results, indent=2))
    lines = ["# Secure aggregation: round time and bytes", "",
             f"Machine: {results['machine']}. Model: the TINY mlm "
             f"({results['bytes'][0]['parameters']:,} parameters, full-model updates).", "",
             *measurement_tables(results)]
    (ROOT / "benchmarks" / "secure_aggregation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def measurement_tables(run: dict) -> list[str]:
    """Markdown lines: bytes per node with and without SecAgg+, then round times (if any)."""
    lines = ["| clients | bytes down/node plain | SecAgg+ | bytes up/node plain | SecAgg+ |",
             "|---|---|---|---|---|"]
    for b in run["bytes"]:
        lines.append(f"| {b['clients']} | {b['plain_per_node']['down']:,} | "
                     f"{b['secagg_per_node']['down']:,} | {b['plain_per_node']['up']:,} | "
                     f"{b['secagg_per_node']['up']:,} |")
    if run["times"]:
        lines += ["", "| clients | secure aggregation | round seconds (each) | mean of rounds 2.. |",
                  "|---|---|---|---|"]
        for t in run["times"]:
            lines.append(f"| {t['clients']} | {t['secure_aggregation']} | "
                         f"{', '.join(f'{s:.2f}' for s in t['round_seconds'])} | "
                         f"{t['mean_after_first']:.2f} |")
    return lines


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def append_run(args: argparse.Namespace, extra: dict) -> None:
    """One measurement with settings over TINY, appended to the .json and .md."""
    run = {"settings": extra, "loadavg_before": _loadavg(),
           "bytes": [round_bytes(n, extra) for n in args.clients], "times": []}
    if not args.bytes_only:
        for clients in args.clients:
            for secure in (False, True):
                run["times"].append(round_times(clients, args.rounds, secure, extra))
                print(json.dumps(run["times"][-1]), flush=True)
    run["loadavg_after"] = _loadavg()
    path = ROOT / "benchmarks" / "secure_aggregation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("with_settings", []).append(run)
    path.write_text(json.dumps(results, indent=2))
    named = " ".join(f"{k}={v}" for k, v in extra.items())
    lines = ["", (f"## With `{named}` ({run['bytes'][0]['parameters']:,} parameters sent per "
                  "update)"), "",
             (f"/proc/loadavg before: `{run['loadavg_before']}`, after: "
              f"`{run['loadavg_after']}`."), "",
             *measurement_tables(run)]
    with open(ROOT / "benchmarks" / "secure_aggregation.md", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
