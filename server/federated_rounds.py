"""The federated rounds: wait for the nodes, run the strategy, return the final global weights."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from common.run_config import RunConfig
from common.tasks import SslTask, federated_state
from server.federation_setup import build_strategy, client_dp_settings, round_instruction
from server.ledger_sync import LedgerCoverage
from server.run_directory import RoundRecorder
from server.secure_aggregation import SecureAggregationRounds, secure_federated_rounds

NODE_WAIT_S = 300.0


def federated_rounds(
    grid: Grid, config: RunConfig, task: SslTask, model: torch.nn.Module,
    recorder: RoundRecorder, coverage: LedgerCoverage, sim_state_dir: Path, done: int,
) -> dict[str, torch.Tensor]:
    """Rounds done+1 .. num-rounds from `model`; returns the final global weights.

    With `secure-aggregation` the rounds run Flower's SecAgg+ (server/secure_aggregation.py);
    `grid` should then be Flower's own (its progress lines come from that module).
    """
    if config.secure_aggregation:
        rounds = SecureAggregationRounds(
            config, recorder, coverage, client_dp_settings(config),
            round_instruction(config, task, recorder.run_id, sim_state_dir), round_offset=done)
        return secure_federated_rounds(grid, config, rounds, federated_state(model), done)
    strategy = build_strategy(config, recorder, coverage, done)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(federated_state(model)),
        num_rounds=config.num_rounds - done,
        timeout=config.round_timeout,  # nodes that have not replied by then are dropouts
        train_config=round_instruction(config, task, recorder.run_id,
                                       sim_state_dir).to_config_record(),
    )
    if len(result.arrays) == 0:  # every round was skipped: Flower reports no arrays at all
        return federated_state(model)
    return result.arrays.to_torch_state_dict()


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
