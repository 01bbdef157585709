"""fedssl ServerApp: federated SSL rounds, then central fine-tuning, baselines, pruning, report.

`main` decodes the run config and runs the stages in order, each a plain function: the run's
start (server/run_start.py), the federated rounds (server/federated_rounds.py), the ledger sync
(server/ledger_sync.py), the downstream evaluation (server/evaluation) and the reports
(server/final_report.py).
"""

from __future__ import annotations

import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.run_config import RunConfig
from common.run_layout import GLOBAL_MODEL_FILE
from common.tasks import federated_state, get_task, load_federated_state
from server.evaluation.pipeline import run_downstream, skipped_downstream
from server.evaluation.safetensors_export import save_state
from server.federated_rounds import federated_rounds, wait_for_nodes
from server.final_report import report_run
from server.ledger_sync import sync_ledgers
from server.round_progress import ProgressGrid
from server.run_checkpoint import update_anchor
from server.run_start import start_run

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the whole pipeline for one run configuration."""
    started = time.monotonic()
    config = RunConfig.from_mapping(context.run_config)
    task = get_task(config.task)
    run = start_run(config, task)  # one run per RUN_DIR; resumes after its last committed round
    model, recorder = run.model, run.recorder
    if run.done < config.num_rounds:
        wait_for_nodes(grid, config.num_clients)
        # ProgressGrid: per-round progress (clients done, elapsed, ETA) as replies arrive;
        # secure aggregation's four message rounds per round report their own progress.
        rounds_grid = grid if config.secure_aggregation else ProgressGrid(grid, config.num_rounds)
        load_federated_state(model, federated_rounds(rounds_grid, config,
                                               task, model, recorder, run.coverage,
                                               run.sim_state_dir, run.done))
    if config.num_rounds > 0:
        # Spend whose reply was lost still reaches the reports: ask every node sampled.
        answered = sync_ledgers(grid, run.coverage, run.ledger, str(run.sim_state_dir),
                                run.run_id)
        update_anchor(run.run_dir, run.ledger.head())
        print(f"[fedssl] ledger sync: {answered} node(s) answered", flush=True)
    save_state(federated_state(model), run.run_dir / GLOBAL_MODEL_FILE)  # also with 0 rounds (warm start)
    # A run whose every round was skipped has no federated model: fine-tuning it would
    # report an untrained model as if it were one. Say so, and fail.
    untrained = config.num_rounds > 0 and recorder.rounds_trained == 0
    if untrained:
        print(f"[fedssl] no round trained: all {recorder.rounds_done} round(s) were skipped "
              f"({recorder.refusals} budget refusal(s); see {run.run_dir}/metrics.jsonl for "
              "every node's status); downstream stage skipped", flush=True)
    downstream = run_downstream(config, model, run.run_dir) if config.downstream \
        and not untrained else skipped_downstream()
    report_run(config, run, downstream, started)
    if untrained:  # after the summary: its privacy section still counts every spend
        raise RuntimeError(f"no federated round trained in {run.run_dir}: every round was "
                           "skipped (see metrics.jsonl)")
