"""What one federated round did: the strategy fills it, the run directory and ledger record it."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.privacy.ledger import LedgerEntry
from server.client_level_dp import ClientDpSettings


@dataclass
class RoundRecord:
    """What one round did, for the ledger, metrics.jsonl and the progress line."""

    server_round: int
    sampled: int
    clients: list[dict[str, float | int | str]] = field(default_factory=list)  # accepted
    spend: list[dict[str, float | int | str]] = field(default_factory=list)  # every reported ε
    rejected: list[dict[str, str | int]] = field(default_factory=list)
    refused: list[dict[str, str | int]] = field(default_factory=list)  # budget refusals
    ledger: list[LedgerEntry] = field(default_factory=list)  # entries the nodes sent
    client_dp: ClientDpSettings | None = None  # set when this round released a noisy mean
    skipped: bool = False  # fewer than min-clients usable updates: model unchanged
    dropouts: list[str] = field(default_factory=list)  # sampled, no reply before the timeout
    seconds: float = 0.0
    attempts: int = 1  # > 1 when a short round was re-run (short-round=retry)
    attempt_log: list[dict[str, object]] = field(default_factory=list)  # per attempt
