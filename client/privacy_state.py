"""The noise multiplier a node chose for this run, kept in Flower's per-node `context.state`.

σ is calibrated once per run, for all of the run's planned steps, and must stay the same in
every round of that run. The node's *spend* does not live here: it lives in the node's durable
ledger (client/node_settings.py, common/privacy_ledger.py), which survives runs and restarts.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

STATE_KEY = "fedssl.privacy"


def load_noise_multiplier(state: RecordDict) -> float | None:
    """σ chosen earlier in this run (None on the node's first round of the run)."""
    if STATE_KEY not in state.config_records:
        return None
    return float(state.config_records[STATE_KEY]["noise-multiplier"])


def save_noise_multiplier(state: RecordDict, sigma: float) -> None:
    """Remember σ for the remaining rounds of this run."""
    state.config_records[STATE_KEY] = ConfigRecord({"noise-multiplier": float(sigma)})
