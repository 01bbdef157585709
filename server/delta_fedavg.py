"""FedAvg over client *updates*: the new global model is w + weighted mean of the valid Δ.

Flower's FedAvg averages whatever arrays clients return and makes that the model; fedssl
clients return clipped updates Δ (never weights), so this strategy keeps the current global
weights, checks each Δ (finite, expected keys and shapes, norm ≤ S), and adds the mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.model_updates import State, apply_update, update_norm

NORM_TOLERANCE = 1e-4  # float32 rounding when the client rescales Δ to exactly S


@dataclass
class RoundRecord:
    """What one round did, for metrics.jsonl and the progress line."""

    server_round: int
    sampled: int
    clients: list[dict[str, float | int]] = field(default_factory=list)  # accepted updates
    spend: list[dict[str, float | int]] = field(default_factory=list)  # every reported ε
    rejected: list[dict[str, str | int]] = field(default_factory=list)
    seconds: float = 0.0


class DeltaFedAvg(FedAvg):
    """FedAvg whose clients reply with clipped updates instead of weights."""

    def __init__(
        self, *, update_clip_norm: float, on_round: Callable[[RoundRecord, State], None],
        **fedavg_kwargs: object,
    ) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.update_clip_norm = update_clip_norm
        self.on_round = on_round
        self._global: State = {}
        self._started = 0.0
        self._sampled = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the weights the round starts from, then sample as FedAvg does."""
        self._global = arrays.to_torch_state_dict()
        self._started = time.monotonic()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the valid updates and apply them to the round's starting weights."""
        record = RoundRecord(server_round=server_round, sampled=self._sampled)
        valid: list[Message] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                record.rejected.append({"node-id": node, "reason": msg.error.reason})
                continue
            metrics = {**dict(msg.content.get("metrics", {})), "node-id": node}
            # A client that trained has spent privacy whether or not its update is used.
            record.spend.append(metrics)
            if "arrays" not in msg.content or "metrics" not in msg.content:
                record.rejected.append({"node-id": node, "reason": "reply lacks arrays/metrics"})
                continue
            update = msg.content["arrays"].to_torch_state_dict()
            problem = update_problem(update, self._global, self.update_clip_norm)
            if problem:
                log(30, "round %d: rejected update from node %d: %s", server_round, node, problem)
                record.rejected.append({"node-id": node, "reason": problem})
                continue
            record.clients.append({**metrics, "received-norm": update_norm(update)})
            valid.append(msg)
        mean_update, metrics = super().aggregate_train(server_round, valid)
        new_state = self._global
        if mean_update is not None:
            new_state = apply_update(self._global, mean_update.to_torch_state_dict())
        record.seconds = time.monotonic() - self._started
        self.on_round(record, new_state)
        return (ArrayRecord(new_state) if mean_update is not None else None), metrics


def update_problem(update: State, reference: State, max_norm: float) -> str:
    """Why `update` cannot be aggregated against model `reference`, or '' if it can.

    Checks keys, shapes, dtypes, finiteness and the clipping bound ‖Δ‖ ≤ S.
    """
    if update.keys() != reference.keys():
        diff = sorted(set(update) ^ set(reference))[:3]
        return f"update keys differ from the model's (e.g. {diff})"
    for key, tensor in update.items():
        if tensor.shape != reference[key].shape:
            expected = tuple(reference[key].shape)
            return f"shape of {key} is {tuple(tensor.shape)}, expected {expected}"
        if not tensor.is_floating_point():
            return f"{key} has non-float dtype {tensor.dtype}"
        if not torch.isfinite(tensor).all():
            return f"non-finite values in {key}"
    norm = update_norm(update)
    if norm > max_norm * (1 + NORM_TOLERANCE):
        return f"update norm {norm:.4g} exceeds update-clip-norm {max_norm}"
    return ""
