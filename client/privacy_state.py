"""The node's record-level privacy state, persisted in Flower's per-node `context.state`.

Flower ClientApps are stateless between messages; `context.state` is the node's memory across
rounds of a run. It holds the noise multiplier (calibrated once, for all planned steps) and the
full accountant history. Dropping it would silently forget earlier spend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, RecordDict

from common.privacy_accounting import HistoryEntry

STATE_KEY = "fedssl.privacy"


@dataclass
class PrivacyState:
    """σ chosen for this node (None until first calibrated) and its DP-SGD history."""

    noise_multiplier: float | None = None
    history: list[HistoryEntry] = field(default_factory=list)


def load_privacy_state(state: RecordDict) -> PrivacyState:
    """Read the node's privacy state (empty on the node's first round)."""
    if STATE_KEY not in state.config_records:
        return PrivacyState()
    record = state.config_records[STATE_KEY]
    sigma = float(record["noise-multiplier"])
    history = list(
        zip(
            [float(x) for x in record["history-noise"]],
            [float(x) for x in record["history-rate"]],
            [int(x) for x in record["history-steps"]],
            strict=True,
        )
    )
    return PrivacyState(noise_multiplier=None if sigma < 0 else sigma, history=history)


def save_privacy_state(state: RecordDict, privacy: PrivacyState) -> None:
    """Write the node's privacy state (call before any update leaves the node)."""
    state.config_records[STATE_KEY] = ConfigRecord(
        {
            "noise-multiplier": -1.0 if privacy.noise_multiplier is None
            else float(privacy.noise_multiplier),
            "history-noise": [float(s) for s, _, _ in privacy.history],
            "history-rate": [float(q) for _, q, _ in privacy.history],
            "history-steps": [int(n) for _, _, n in privacy.history],
        }
    )
