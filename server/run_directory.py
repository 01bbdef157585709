"""RUN_DIR: where one run's outputs live, and the per-round record written into it.

Layout (a contract the tests check; documented in docs/run-dir.md):
  config.json               the resolved run configuration
  tokenizer.json            the public vocabulary the run used (text task)
  metrics.jsonl             one JSON line per federated round
  ledger.sqlite             the privacy ledger: every node's entries + client-level DP events
  nodes/                    simulation only: each simulated node's own state (ledger.sqlite)
  global_model.safetensors  the aggregated SSL model after the latest round
  checkpoint.json, checkpoints/  the last committed round and its model (server resume)
  models/                   finetuned, baseline and pruned classifiers (+ finetuned-hf/)
  summary.json, report.md   final results
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from common.model_updates import State
from common.privacy.ledger import RECORD_LEVEL, PrivacyLedger
from common.protocol import NUM_EXAMPLES, TRAIN_LOSS, UPDATE_NORM
from common.run_config import RunConfig
from common.run_layout import CONFIG_FILE, METRICS_FILE
from server.atomic_json import write_json
from server.privacy_summary import secure_round_facts
from server.round_record import RoundRecord
from server.run_checkpoint import commit_round, save_round_model
from server.run_ledger import record_round


def prepare_run_dir(
    config: RunConfig, public_files: dict[str, str], resume_after: int | None = None
) -> Path:
    """Create RUN_DIR (absolute), write the config, copy the run's public inputs into it.

    `public_files` maps a name in RUN_DIR to a file (e.g. the text task's vocabulary), so a
    run records every public input it used. A fresh run (`resume_after` None) starts a fresh
    metrics.jsonl; a resumed one keeps the lines of its committed rounds only.
    """
    run_dir = Path(config.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / METRICS_FILE
    if resume_after is None:
        metrics.unlink(missing_ok=True)
    elif metrics.exists():  # drop a line written for a round that was never committed
        kept = [line for line in metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["round"] <= resume_after]
        metrics.write_text("".join(line + "\n" for line in kept))
    write_json(run_dir / CONFIG_FILE, config.to_mapping())
    for name, source in public_files.items():
        shutil.copyfile(source, run_dir / name)
    return run_dir


class RoundRecorder:
    """Per round: ledger first, then metrics.jsonl, the global model and a progress line."""

    def __init__(
        self, run_dir: Path, config: RunConfig, ledger: PrivacyLedger, run_id: str
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.num_rounds = config.num_rounds
        self.ledger = ledger
        self.run_id = run_id
        self.run_ids = {run_id}  # every Flower run that wrote this RUN_DIR (resumes add one)
        self.delta = config.delta
        self.records: dict[str, int] = {}  # node → record count it reported (not privacy)
        self.refusals = 0
        self.rounds_done = 0
        self.rounds_trained = 0  # rounds in which at least one update was used
        # secure aggregation: per round t and contributors, for the privacy statement
        self.secure_rounds: list[dict[str, Any]] = []

    def __call__(self, record: RoundRecord, global_state: State) -> None:
        """Record one finished round (its privacy spend before anything else)."""
        federation = record_round(self.ledger, record, self.run_id, self.delta,
                                  self.config.reproducible_noise)
        self.rounds_done += 1
        self.rounds_trained += bool(record.clients) and not record.skipped
        self.refusals += len(record.refused)
        for client in record.spend:
            if NUM_EXAMPLES in client:
                self.records[str(client["node"])] = int(client[NUM_EXAMPLES])
        # ε per round from the ledger entries the nodes sent for this round, not from metrics.
        eps = [e.epsilon for e in record.ledger
               if e.round == record.server_round and e.run_id == self.run_id
               and not e.is_confirmation and e.guarantee == RECORD_LEVEL]
        # (nodes under secure aggregation do not send their update's norm)
        norms = [float(c[UPDATE_NORM]) for c in record.clients if UPDATE_NORM in c]
        line = {
            "round": record.server_round,
            "run_id": self.run_id,
            "clients_sampled": record.sampled,
            "clients_ok": len(record.clients),
            "rejected": record.rejected,
            "refused": record.refused,
            "dropouts": record.dropouts,
            "skipped": record.skipped,
            "attempts": record.attempt_log,
            "client_level_epsilon": None if federation is None else federation.epsilon,
            "train_loss": weighted_loss(record.clients),
            "max_epsilon": max(eps, default=None),
            "mean_epsilon": statistics.fmean(eps) if eps else None,
            "update_norm_mean": statistics.fmean(norms) if norms else None,
            "update_norm_max": max(norms, default=None),
            "wall_seconds": round(record.seconds, 3),
            "clients": record.clients,
        }
        if self.config.secure_aggregation:
            self.secure_rounds.append(secure_round_facts(line))
        model_file, line["model_sha256"] = save_round_model(self.run_dir, record.server_round,
                                                            global_state)
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        commit_round(self.run_dir, record.server_round, model_file, line["model_sha256"],
                     global_state, self.config, self.ledger.head())
        print(_progress_line(line, self.num_rounds), flush=True)

    def restore(self) -> None:
        """After a restart: rebuild the counters and run ids from the committed rounds' lines."""
        path = self.run_dir / METRICS_FILE
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        for line in lines:
            self.rounds_done += 1
            self.rounds_trained += bool(line.get("clients")) and not line.get("skipped")
            self.refusals += len(line.get("refused", []))
            if line.get("run_id"):
                self.run_ids.add(str(line["run_id"]))
            if self.config.secure_aggregation:
                self.secure_rounds.append(secure_round_facts(line))
            for client in line["clients"]:
                if NUM_EXAMPLES in client:
                    self.records[str(client["node"])] = int(client[NUM_EXAMPLES])


def weighted_loss(clients: list[dict[str, float | int]]) -> float | None:
    """Mean client training loss weighted by record count (None without clients, or when the
    nodes keep their loss to themselves: the default, see `release-train-loss`)."""
    clients = [c for c in clients if TRAIN_LOSS in c]
    total = sum(float(c[NUM_EXAMPLES]) for c in clients)
    if not clients or total == 0:
        return None
    return sum(float(c[TRAIN_LOSS]) * float(c[NUM_EXAMPLES]) for c in clients) / total


def _progress_line(line: dict[str, Any], num_rounds: int) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"[fedssl] round {line['round']}/{num_rounds} | clients {line['clients_ok']}"
        f"/{line['clients_sampled']}"
        + (f" ({len(line['refused'])} refused: budget)" if line["refused"] else "")
        + (f" ({len(line['dropouts'])} no reply)" if line["dropouts"] else "")
        + (f" ({len(line['attempts'])} attempts)" if len(line.get("attempts", [])) > 1 else "")
        + (" SKIPPED: too few updates, model unchanged" if line["skipped"] else "")
        + f" | ssl loss {fmt(line['train_loss'], '.3f')}"
        f" | eps max {fmt(line['max_epsilon'], '.2f')} mean {fmt(line['mean_epsilon'], '.2f')}"
        f" | update norm {fmt(line['update_norm_mean'], '.2f')}"
        f" | {line['wall_seconds']:.1f}s"
    )
