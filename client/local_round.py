"""One client round as a plain function: records in, clipped update and metrics out.

The order is the privacy contract:
1. choose σ (once per run, for all of the run's planned steps);
2. project the node's ε after this round from its durable ledger; past its budget, refuse;
3. append the round's spend to the ledger (durable) *before* touching the data, so a crash
   during training can only over-count, never under-count;
4. train with DP-SGD, then build the clipped update that leaves the node;
5. confirm the write-ahead entry (durable) before the reply leaves. An entry without its
   confirmation is a round that crashed: still counted in full (an over-count), and reported
   as such by `fedssl audit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.common import log

from client.dp_training import DpSettings, LocalResult, poisson_sample_rate, train_locally
from client.node_settings import NodeSettings
from common.model_updates import State, clip_update, compute_update
from common.privacy_accounting import ACCOUNTANT, calibrate_noise_multiplier, epsilon_of
from common.privacy_ledger import POISSON_GAUSSIAN, RECORD_LEVEL, LedgerEntry, PrivacyLedger
from common.run_config import RunConfig
from common.tasks import SslTask, freeze_vocabulary


@dataclass(frozen=True)
class RoundOutput:
    """What a client sends back: the clipped update and its metrics, or a refusal."""

    update: State | None  # None when the node refused the round
    metrics: dict[str, float | int]
    refusal: str = ""  # why the node did not train ("" when it did)
    entry: LedgerEntry | None = None  # this round's spend (None when refused)


def choose_noise_multiplier(config: RunConfig, num_records: int) -> float:
    """The node's σ: explicit, or calibrated so the run's planned steps land at target-epsilon."""
    fixed = config.fixed_noise_multiplier
    if fixed is not None:
        return fixed
    rate = poisson_sample_rate(num_records, config.batch_size)
    planned_steps = config.num_rounds * config.local_steps
    return calibrate_noise_multiplier(config.target_epsilon, config.delta, rate, planned_steps)


def run_client_round(
    config: RunConfig,
    task: SslTask,
    global_state: State,
    records: tuple[torch.Tensor, ...],
    node: NodeSettings,
    ledger: PrivacyLedger,
    noise_multiplier: float,
    run_id: str,
    server_round: int,
    seed: int,
    train: Callable[..., LocalResult] = train_locally,
) -> RoundOutput:
    """Train locally under DP from `global_state` and return the clipped update Δ.

    Refuses (trains nothing, records nothing) when this round would take the node's ε past
    its budget. `train` is the DP-SGD loop (a parameter so tests can make it crash).
    """
    num_records = len(records[0])
    rate = poisson_sample_rate(num_records, config.batch_size)
    history = ledger.history(node.node_id, RECORD_LEVEL)
    spent = epsilon_of(history, node.delta)
    projected = epsilon_of([*history, (noise_multiplier, rate, config.local_steps)], node.delta)
    budget_metrics = {"epsilon": spent, "projected-epsilon": projected,
                      "max-epsilon": node.max_epsilon, "delta": node.delta}
    if node.max_epsilon > 0 and projected > node.max_epsilon:
        reason = (f"budget: this round would take ε from {spent:.4g} to {projected:.4g} "
                  f"(δ={node.delta:g}), past the node's max-epsilon {node.max_epsilon:g}")
        return RoundOutput(update=None, metrics=budget_metrics, refusal=reason)

    entry = ledger.append(  # durable before any record is read for training
        run_id=run_id, round=server_round, node_id=node.node_id, guarantee=RECORD_LEVEL,
        mechanism=POISSON_GAUSSIAN, noise_multiplier=noise_multiplier, sample_rate=rate,
        steps=config.local_steps, delta=node.delta, accountant=ACCOUNTANT,
        epsilon=projected, max_epsilon=node.max_epsilon,
    )
    model = task.build_model(config)
    model.load_state_dict(global_state)
    if config.freeze_embeddings:
        freeze_vocabulary(task, model)
    settings = DpSettings(
        noise_multiplier=noise_multiplier,
        clip_norm=config.clip_norm,
        batch_size=config.batch_size,
        local_steps=config.local_steps,
        learning_rate=config.learning_rate,
        grad_sample_mode=(task.frozen_grad_sample_mode if config.freeze_embeddings
                          else task.grad_sample_mode),
    )
    result = train(model, records, task.per_record_loss, settings, history, seed)
    if (result.steps, result.sample_rate) != (entry.steps, entry.sample_rate):
        # The ledger must describe what ran; never release an update it does not cover.
        raise RuntimeError(f"DP-SGD ran {result.steps} steps at q={result.sample_rate}, "
                           f"but the ledger recorded {entry.steps} at q={entry.sample_rate}")
    update, raw_norm = clip_update(
        compute_update(model.state_dict(), global_state), config.update_clip_norm
    )
    if ledger.confirm(entry) is None:
        # Another entry was appended since ours (two processes sharing one state dir): the
        # round stays unconfirmed, i.e. over-counted in reports; the spend is recorded either way.
        log(30, "fedssl node %s: round %d's ledger entry is no longer the node's latest; "
            "left unconfirmed (reported as a crashed round)", node.node_id, server_round)
    # Δ (and its norm) is post-processing of DP-SGD output. The record count and the mean
    # training loss are not: they are released outside the DP guarantee (README, "Privacy").
    return RoundOutput(
        update=update,
        entry=entry,
        metrics={
            **budget_metrics,
            "epsilon": entry.epsilon,
            "num-examples": num_records,
            "train-loss": result.mean_loss,
            "noise-multiplier": noise_multiplier,
            "sample-rate": rate,
            "local-steps": result.steps,
            "total-steps": sum(n for _, _, n in history) + result.steps,
            "update-norm": raw_norm,
        },
    )
