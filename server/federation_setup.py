"""The federation's set-up from the run config: the strategy (UpdateFedAvg with its aggregator,
client-level DP and sampling) and the round instruction every train message carries."""

from __future__ import annotations

from pathlib import Path

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from common.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EPSILON,
    NUM_EXAMPLES,
    TRAIN_LOSS,
    RoundInstruction,
)
from common.run_config import RunConfig
from common.tasks import SslTask
from server.client_level_dp import ClientDpSettings
from server.ledger_sync import LedgerCoverage
from server.run_directory import RoundRecorder, weighted_loss
from server.update_fedavg import UpdateFedAvg

# The record keys of fedssl's wire format, which are also Flower's defaults (common/protocol).
_RECORD_KEYS = {"arrayrecord_key": ARRAYS_KEY, "configrecord_key": CONFIG_KEY,
                "weighted_by_key": NUM_EXAMPLES}


def build_strategy(config: RunConfig, recorder: RoundRecorder, coverage: LedgerCoverage,
                   done: int) -> UpdateFedAvg:
    """The strategy for rounds done+1 .. num-rounds."""
    poisson = config.client_sampling == "poisson"
    return UpdateFedAvg(
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
        **_RECORD_KEYS,
    )


def round_instruction(config: RunConfig, task: SslTask, run_id: str,
                      sim_state_dir: Path) -> RoundInstruction:
    """What every train message of the run says (the strategy adds round and attempt)."""
    return RoundInstruction(
        run_id=run_id,  # the entries nodes write carry it (server/run_ledger.py)
        task=config.task,
        # Simulated nodes keep their ledgers here; deployed nodes use their own state-dir.
        sim_state_dir=str(sim_state_dir),
        public_inputs_sha256=task.public_inputs_sha256(config),
    )


def robust_aggregator(config: RunConfig) -> FedAvg | None:
    """Flower's robust aggregator for `aggregator=median|trimmed-mean` (None: the mean)."""
    if config.aggregator == "median":
        return FedMedian(fraction_evaluate=0.0, **_RECORD_KEYS)
    if config.aggregator == "trimmed-mean":
        return FedTrimmedAvg(fraction_evaluate=0.0, beta=config.trim_fraction, **_RECORD_KEYS)
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


def aggregate_client_metrics(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """Round metrics for Flower's log: ε as max and mean (never only averaged), and the
    weighted loss when nodes release it (`release-train-loss`). Reports use the ledger.

    Flower passes `weight_key` ("num-examples"), which `weighted_loss` uses too.
    """
    metrics = [dict(next(iter(r.metric_records.values()))) for r in replies]
    eps = [float(m[EPSILON]) for m in metrics]
    loss = weighted_loss(metrics)
    return MetricRecord({
        "epsilon-max": max(eps),
        "epsilon-mean": sum(eps) / len(eps),
        **({TRAIN_LOSS: loss} if loss is not None else {}),
    })
