"""fedssl ServerApp: federated SSL rounds, then central fine-tuning, baselines, pruning, report."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from common.run_config import RunConfig
from common.run_layout import NODES_DIR
from common.tasks import SslTask, get_task
from server.client_level_dp import ClientDpSettings
from server.evaluation.pipeline import run_downstream, skipped_downstream
from server.evaluation.safetensors_export import save_state
from server.ledger_sync import LedgerCoverage, sync_ledgers
from server.privacy_summary import privacy_section
from server.public_warm_start import warm_start
from server.round_progress import ProgressGrid
from server.run_checkpoint import GLOBAL_MODEL, find_checkpoint, update_anchor
from server.run_directory import RoundRecorder, prepare_run_dir, weighted_loss
from server.run_ledger import open_run_ledger
from server.run_lock import hold_run_dir
from server.run_report import build_summary, epsilon_text, summary_table, write_reports
from server.update_fedavg import UpdateFedAvg

app = ServerApp()
NODE_WAIT_S = 300.0


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the whole pipeline for one run configuration."""
    started = time.monotonic()
    config = RunConfig.from_mapping(context.run_config)
    task = get_task(config.task)
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
        model.load_state_dict(checkpoint.load_model())
        recorder.restore()
        print(f"[fedssl] resuming after round {done}/{config.num_rounds} (model sha256 "
              f"{checkpoint.model_sha256[:16]})", flush=True)
    sim_state_dir = Path(config.sim_state_dir or run_dir / NODES_DIR).expanduser().resolve()
    if done < config.num_rounds:
        wait_for_nodes(grid, config.num_clients)
        # ProgressGrid: per-round progress (clients done, elapsed, ETA) as replies arrive.
        model.load_state_dict(federated_rounds(ProgressGrid(grid, config.num_rounds), config,
                                               task, model, recorder, coverage, sim_state_dir,
                                               done))
    if config.num_rounds > 0:
        # Spend whose reply was lost still reaches the reports: ask every node sampled.
        answered = sync_ledgers(grid, coverage, ledger, str(sim_state_dir), run_id)
        update_anchor(run_dir, ledger.head())
        print(f"[fedssl] ledger sync: {answered} node(s) answered", flush=True)
    save_state(model.state_dict(), run_dir / GLOBAL_MODEL)  # also with 0 rounds (warm start)
    # A run whose every round was skipped has no federated model: fine-tuning it would
    # report an untrained model as if it were one. Say so, and fail.
    untrained = config.num_rounds > 0 and recorder.rounds_trained == 0
    if untrained:
        print(f"[fedssl] no round trained: all {recorder.rounds_done} round(s) were skipped "
              f"({recorder.refusals} budget refusal(s); see {run_dir}/metrics.jsonl for "
              "every node's status); downstream stage skipped", flush=True)
    downstream = run_downstream(config, model, run_dir) if config.downstream and not untrained \
        else skipped_downstream()
    privacy = privacy_section(ledger, coverage, config, recorder.run_ids, recorder.records,
                              recorder.refusals)
    summary = build_summary(config, downstream, privacy, rounds_done=recorder.rounds_done,
                            wall_seconds=time.monotonic() - started, run_ids=recorder.run_ids,
                            rounds_trained=recorder.rounds_trained)
    write_reports(run_dir, summary)
    print("[fedssl] results\n" + summary_table(summary), flush=True)
    print(f"[fedssl] {epsilon_text(privacy)}; wrote {run_dir}/summary.json", flush=True)
    if untrained:  # after the summary: its privacy section still counts every spend
        raise RuntimeError(f"no federated round trained in {run_dir}: every round was "
                           "skipped (see metrics.jsonl)")


def federated_rounds(
    grid: Grid, config: RunConfig, task: SslTask, model: torch.nn.Module,
    recorder: RoundRecorder, coverage: LedgerCoverage, sim_state_dir: Path, done: int,
) -> dict[str, torch.Tensor]:
    """Rounds done+1 .. num-rounds from `model`; returns the final global weights."""
    poisson = config.client_sampling == "poisson"
    strategy = UpdateFedAvg(
        update_clip_norm=config.update_clip_norm,
        on_round=recorder,
        client_dp=client_dp_settings(config),
        poisson_rate=config.fraction_train if poisson else None,
        expected_clients=config.num_clients,
        seed=config.seed,
        reproducible_noise=config.reproducible_noise,
        coverage=coverage,
        round_offset=done,
        min_clients=config.min_clients,
        round_retries=config.round_retries if config.short_round == "retry" else 0,
        round_timeout=config.round_timeout,
        robust=robust_aggregator(config),
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_available_nodes=config.num_clients,  # wait until every expected node is up
        train_metrics_aggr_fn=aggregate_client_metrics,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_rounds - done,
        timeout=config.round_timeout,  # nodes that have not replied by then are dropouts
        # Simulated nodes keep their ledgers here; deployed nodes use their own state-dir.
        train_config=ConfigRecord({
            "run-id": recorder.run_id,  # the entries nodes write carry it (server/run_ledger.py)
            "task": config.task,
            "sim-state-dir": str(sim_state_dir),
            "public-inputs-sha256": task.public_inputs_sha256(config),
        }),
    )
    if len(result.arrays) == 0:  # every round was skipped: Flower reports no arrays at all
        return model.state_dict()
    return result.arrays.to_torch_state_dict()


def robust_aggregator(config: RunConfig) -> FedAvg | None:
    """Flower's robust aggregator for `aggregator=median|trimmed-mean` (None: the mean)."""
    if config.aggregator == "median":
        return FedMedian(fraction_evaluate=0.0)
    if config.aggregator == "trimmed-mean":
        return FedTrimmedAvg(fraction_evaluate=0.0, beta=config.trim_fraction)
    return None


def client_dp_settings(config: RunConfig) -> ClientDpSettings | None:
    """Client-level DP parameters, or None when it is off.

    Amplification (q = fraction-train) is claimed only with Poisson client sampling; Flower's
    fixed-size sampling is accounted as no amplification (q = 1).
    """
    if not config.client_dp:
        return None
    poisson = config.client_sampling == "poisson"
    return ClientDpSettings(
        noise_multiplier=config.client_noise_multiplier,
        clip_norm=config.update_clip_norm,
        sample_rate=config.fraction_train if poisson else 1.0,
        poisson=poisson,
    )


def wait_for_nodes(grid: Grid, expected: int, timeout_s: float = NODE_WAIT_S) -> None:
    """Block until `expected` nodes are connected; fail clearly instead of waiting forever."""
    deadline = time.monotonic() + timeout_s
    while (connected := len(list(grid.get_node_ids()))) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {connected} of num-clients={expected} nodes connected within "
                f"{timeout_s:.0f}s; in simulation pass --federation-config "
                f"'num-supernodes={expected}' to flwr run, or lower num-clients"
            )
        time.sleep(1.0)
    print(f"[fedssl] {connected} nodes connected", flush=True)


def aggregate_client_metrics(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """Round metrics for Flower's log: ε as max and mean (never only averaged), and the
    weighted loss when nodes release it (`release-train-loss`). Reports use the ledger.

    Flower passes `weight_key` ("num-examples"), which `weighted_loss` uses too.
    """
    metrics = [dict(next(iter(r.metric_records.values()))) for r in replies]
    eps = [float(m["epsilon"]) for m in metrics]
    loss = weighted_loss(metrics)
    return MetricRecord({
        "epsilon-max": max(eps),
        "epsilon-mean": sum(eps) / len(eps),
        **({"train-loss": loss} if loss is not None else {}),
    })
