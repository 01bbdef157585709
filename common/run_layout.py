"""The names of the files in a RUN_DIR, written once (docs/run-dir.md).

Every file and folder a run, `fedssl simulate`, `fedssl compress` or `fedssl audit` puts in a
RUN_DIR is named here and nowhere else (tests/test_layering.py checks that no other module
spells one). What lives inside `compressed/` and `audit/` is named by the command that writes
it (server/compression/, common/privacy/audit_report.py): those folders can move (`--out`).
"""

from __future__ import annotations

CONFIG_FILE = "config.json"  # the resolved run settings
TOKENIZER_FILE = "tokenizer.json"  # the public vocabulary the run used (text tasks)
WARM_START_FILE = "warm_start.json"  # the server's public warm start (warm-start-steps > 0)
METRICS_FILE = "metrics.jsonl"  # one line per federated round
LEDGER_FILE = "ledger.sqlite"  # the privacy ledger (also a node's own, in its state dir)
NODES_DIR = "nodes"  # simulation: each simulated node's own state (default sim-state-dir)
GLOBAL_MODEL_FILE = "global_model.safetensors"  # the aggregated model after the latest round
MODELS_DIR = "models"  # the downstream stage's classifiers
FINETUNED_HF_DIR = "finetuned-hf"  # in MODELS_DIR: the fine-tuned one in save_pretrained format
COMPRESSED_DIR = "compressed"  # `fedssl compress RUN_DIR` writes its variants here
SUMMARY_FILE = "summary.json"  # final results, with the ledger anchor
REPORT_FILE = "report.md"  # the same as readable tables, with the verdict
CHECKPOINT_FILE = "checkpoint.json"  # the last committed round, with the ledger anchor
CHECKPOINTS_DIR = "checkpoints"  # the committed round's global model
ROUND_MODEL_GLOB = "round-*.safetensors"  # in CHECKPOINTS_DIR: every round's model file
SIMULATION_LOG = "simulation.log"  # `fedssl simulate`: the full Flower log
SUPERLINK_LOG = "superlink.log"  # `fedssl simulate`: the SuperLink's log
LOCK_FILE = ".lock"  # held by the ServerApp while a run is live; names its holder's pid
AUDIT_DIR = "audit"  # `fedssl audit RUN_DIR` writes its report here (without --out)
RUN_OWNER = "run"  # owner of a RUN_DIR's ledger (a node's own ledger is owned by its id)


def model_file(arm: str) -> str:
    """The file in MODELS_DIR of a downstream arm's classifier (`finetuned`, `baseline`,
    `pruned`)."""
    return f"{arm}.safetensors"


def round_model_file(server_round: int) -> str:
    """The file in CHECKPOINTS_DIR of the global model after `server_round`."""
    return f"round-{server_round}.safetensors"
