"""The Flower internals the node's side uses, in one place (Flower 1.42.x, pinned in pyproject.toml).

The server's side keeps its own in server/flower_internals.py (its docstring says what
"internal" means here); the layering keeps client/ from importing server/, so the node's sit
here. tests/test_flower_internals.py checks each item below against the installed Flower and
fails naming the Flower version and the symbol.

All of them serve secure aggregation (client/secure_aggregation.py), which Flower 1.42 offers
only in the legacy FitIns/FitRes API:
* `ClientAppCallable` (flwr.clientapp.typing): the type of a ClientApp mod's `call_next`;
* `RECORD_KEY_CONFIGS` (flwr.common.secure_aggregation.secaggplus_constants): the protocol's
  ConfigRecord in a message, which tells a SecAgg+ train message from a plain one;
* `fitres_to_recorddict` (flwr.compat.common.recorddict_compat): the legacy FitRes records
  `secaggplus_mod` reads the update to mask from;
* `secaggplus_threshold`: the reconstruction threshold t that `secaggplus_mod` keeps in the
  node's `context.state`, under RECORD_KEY_STATE, as its SecAggPlusState field `threshold`.
"""

from __future__ import annotations

from flwr.app import RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

__all__ = ["RECORD_KEY_CONFIGS", "ClientAppCallable", "fitres_to_recorddict",
           "secaggplus_threshold"]


def secaggplus_threshold(state: RecordDict) -> int:
    """t of this node's SecAgg+ protocol, from the state `secaggplus_mod` keeps in
    `context.state` (set in the protocol's set-up stage)."""
    return int(state.config_records[RECORD_KEY_STATE]["threshold"])  # type: ignore[arg-type]
