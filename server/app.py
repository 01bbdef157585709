"""fedssl ServerApp: federated SSL rounds, then central fine-tuning, baselines, pruning, report."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.mlm_task import tokenizer_path
from common.run_config import RunConfig
from common.tasks import get_task
from server.delta_fedavg import DeltaFedAvg
from server.downstream_stage import run_downstream
from server.run_directory import RoundRecorder, prepare_run_dir, weighted_loss
from server.run_report import build_summary, summary_table, write_reports

app = ServerApp()
NODE_WAIT_S = 300.0


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the whole pipeline for one run configuration."""
    started = time.monotonic()
    config = RunConfig.from_mapping(context.run_config)
    task = get_task(config.task)
    run_dir = prepare_run_dir(config, tokenizer_path(config))
    print(f"[fedssl] RUN_DIR {run_dir}", flush=True)

    wait_for_nodes(grid, config.num_clients)
    torch.manual_seed(config.seed)
    model = task.build_model(config)
    recorder = RoundRecorder(run_dir, config.num_rounds)
    strategy = DeltaFedAvg(
        update_clip_norm=config.update_clip_norm,
        on_round=recorder,
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_available_nodes=config.num_clients,  # wait until every expected node is up
        train_metrics_aggr_fn=aggregate_client_metrics,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_rounds,
        train_config=ConfigRecord({"task": config.task}),
    )
    model.load_state_dict(result.arrays.to_torch_state_dict())

    downstream = run_downstream(config, model, run_dir)
    summary = build_summary(
        config,
        downstream,
        recorder.per_client_epsilon(),
        recorder.per_client_privacy(),
        rounds_done=recorder.rounds_done,
        wall_seconds=time.monotonic() - started,
    )
    write_reports(run_dir, summary)
    print("[fedssl] results\n" + summary_table(summary), flush=True)
    print(f"[fedssl] max record-level epsilon {summary['privacy']['max_epsilon']:.3f} "
          f"at delta {config.delta:g}; wrote {run_dir}/summary.json", flush=True)


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
    """Round metrics for Flower's log: weighted loss; ε as max and mean, never only averaged.

    Flower passes `weight_key` ("num-examples"), which `weighted_loss` uses too.
    """
    metrics = [dict(next(iter(r.metric_records.values()))) for r in replies]
    eps = [float(m["epsilon"]) for m in metrics]
    return MetricRecord({
        "train-loss": weighted_loss(metrics) or 0.0,
        "epsilon-max": max(eps),
        "epsilon-mean": sum(eps) / len(eps),
    })
