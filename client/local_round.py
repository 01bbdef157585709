"""One client round as a plain function: records in, clipped update and metrics out.

The order is the privacy contract: choose σ (once per node, for all planned steps), train with
DP-SGD continuing the node's history, *persist the extended history*, and only then build the
update that leaves the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from client.dp_training import DpSettings, poisson_sample_rate, train_locally
from client.privacy_state import PrivacyState
from common.model_updates import State, clip_update, compute_update
from common.privacy_accounting import calibrate_noise_multiplier, epsilon_of
from common.run_config import RunConfig
from common.tasks import SslTask


@dataclass(frozen=True)
class RoundOutput:
    """What a client sends back: the clipped update and its metrics."""

    update: State
    metrics: dict[str, float | int]


def choose_noise_multiplier(config: RunConfig, num_records: int) -> float:
    """The node's σ: explicit, or calibrated so all planned steps land at target-epsilon."""
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
    privacy: PrivacyState,
    persist: Callable[[PrivacyState], None],
    seed: int,
) -> RoundOutput:
    """Train locally under DP from `global_state` and return the clipped update Δ."""
    num_records = len(records[0])
    if privacy.noise_multiplier is None:
        privacy.noise_multiplier = choose_noise_multiplier(config, num_records)
        persist(privacy)
    model = task.build_model(config)
    model.load_state_dict(global_state)
    settings = DpSettings(
        noise_multiplier=privacy.noise_multiplier,
        clip_norm=config.clip_norm,
        batch_size=config.batch_size,
        local_steps=config.local_steps,
        learning_rate=config.learning_rate,
    )
    result = train_locally(
        model, records, task.per_record_loss, settings, privacy.history, seed
    )
    privacy.history = result.history
    persist(privacy)  # spend is durable before anything derived from the data leaves
    update, raw_norm = clip_update(
        compute_update(model.state_dict(), global_state), config.update_clip_norm
    )
    # Δ (and its norm) is post-processing of DP-SGD output. The record count and the mean
    # training loss are not: they are released outside the DP guarantee (README, "Privacy").
    return RoundOutput(
        update=update,
        metrics={
            "num-examples": num_records,
            "train-loss": result.mean_loss,
            "epsilon": epsilon_of(privacy.history, config.delta),
            "delta": config.delta,
            "noise-multiplier": privacy.noise_multiplier,
            "sample-rate": result.sample_rate,
            "local-steps": result.steps,
            "total-steps": sum(n for _, _, n in privacy.history),
            "update-norm": raw_norm,
        },
    )
