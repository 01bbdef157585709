"""The names of the files in a RUN_DIR, written once (docs/run-dir.md)."""

from __future__ import annotations

CONFIG_FILE = "config.json"  # the resolved run settings
METRICS_FILE = "metrics.jsonl"  # one line per federated round
LEDGER_FILE = "ledger.sqlite"  # the privacy ledger (also a node's own, in its state dir)
SUMMARY_FILE = "summary.json"  # final results, with the ledger anchor
CHECKPOINT_FILE = "checkpoint.json"  # the last committed round, with the ledger anchor
NODES_DIR = "nodes"  # simulation: each simulated node's own state (default sim-state-dir)
RUN_OWNER = "run"  # owner of a RUN_DIR's ledger (a node's own ledger is owned by its id)
