"""A run's start: lock RUN_DIR, find its last committed round, prepare the folder, build (warm
start or restore) the model, open the run ledger, and set up the per-round recording."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common.privacy.ledger import PrivacyLedger
from common.run_config import RunConfig
from common.run_layout import NODES_DIR
from common.tasks import SslTask, load_federated_state
from server.ledger_sync import LedgerCoverage
from server.public_warm_start import warm_start
from server.run_checkpoint import find_checkpoint
from server.run_directory import RoundRecorder, prepare_run_dir
from server.run_ledger import open_run_ledger
from server.run_lock import hold_run_dir


@dataclass
class RunStart:
    """Where a run starts from."""

    run_dir: Path
    model: torch.nn.Module
    ledger: PrivacyLedger
    run_id: str
    recorder: RoundRecorder
    coverage: LedgerCoverage
    done: int  # rounds committed before this server process started
    sim_state_dir: Path


def start_run(config: RunConfig, task: SslTask) -> RunStart:
    """Lock RUN_DIR (one run per RUN_DIR) and resume after its last committed round, if any."""
    hold_run_dir(Path(config.run_dir).expanduser().resolve())  # one run per RUN_DIR
    checkpoint = find_checkpoint(Path(config.run_dir).expanduser().resolve(), config)
    done = checkpoint.round if checkpoint else 0
    run_dir = prepare_run_dir(config, task.public_files(config),
                              resume_after=None if checkpoint is None else done)
    print(f"[fedssl] RUN_DIR {run_dir}", flush=True)

    torch.manual_seed(config.seed)
    model = task.build_model(config)
    ledger, run_id = open_run_ledger(run_dir)
    recorder = RoundRecorder(run_dir, config, ledger, run_id)
    # After a restart the server does not know whom it sampled before: sync every node.
    coverage = LedgerCoverage(run_id=run_id, unknown_history=checkpoint is not None)
    if checkpoint is None and config.warm_start_steps:
        warm_start(config, task, model, run_dir)  # public data: no ledger entry
    if checkpoint is not None:
        load_federated_state(model, checkpoint.load_model())
        recorder.restore()
        print(f"[fedssl] resuming after round {done}/{config.num_rounds} (model sha256 "
              f"{checkpoint.model_sha256[:16]})", flush=True)
    sim_state_dir = Path(config.sim_state_dir or run_dir / NODES_DIR).expanduser().resolve()
    return RunStart(run_dir, model, ledger, run_id, recorder, coverage, done, sim_state_dir)
