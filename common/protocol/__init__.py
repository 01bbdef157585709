"""fedssl's message format, defined once for both sides (Flower Message API).

* a train message (server → node): the global weights and a `RoundInstruction`
  (instruction.py);
* its reply (node → server): a `ClientReply` (reply.py): status, reason, node, this run's
  ledger entries, metrics and, when it trained, the clipped update Δ; encoded by the client
  (`to_record_dict`), parsed and validated by the server (`ClientReply.parse`);
* the ledger sync after the last round: a `LedgerSyncQuery` and each node's
  `LedgerSyncAnswer` (ledger_sync.py).

Every string key of the wire format is in keys.py; client/ and server/ use only these types and
names.
"""

from __future__ import annotations

from common.protocol.instruction import RoundInstruction, global_arrays
from common.protocol.keys import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DELTA,
    EPSILON,
    LEDGER_SYNC,
    LOCAL_STEPS,
    MAX_EPSILON,
    METRICS_KEY,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PARTITION_ID,
    PROJECTED_EPSILON,
    QUERY_KEY,
    REPLY_KEY,
    SAMPLE_RATE,
    STATUS_ERROR,
    STATUS_LEDGER,
    STATUS_REFUSED,
    STATUS_TRAINED,
    TRAIN_LOSS,
    UPDATE_NORM,
)
from common.protocol.ledger_sync import LedgerSyncAnswer, LedgerSyncQuery
from common.protocol.reply import (
    CANONICAL_METRICS,
    MAX_NAME,
    MAX_REASON,
    MAX_WEIGHT,
    ClientReply,
    canonical_content,
    reply_ledger,
    update_of,
)

__all__ = [
    "ARRAYS_KEY", "CANONICAL_METRICS", "CONFIG_KEY", "DELTA", "EPSILON", "LEDGER_SYNC",
    "LOCAL_STEPS", "MAX_EPSILON", "MAX_NAME", "MAX_REASON", "MAX_WEIGHT", "METRICS_KEY",
    "NOISE_MULTIPLIER", "NUM_EXAMPLES", "PARTITION_ID", "PROJECTED_EPSILON", "QUERY_KEY",
    "REPLY_KEY", "SAMPLE_RATE", "STATUS_ERROR", "STATUS_LEDGER", "STATUS_REFUSED",
    "STATUS_TRAINED", "TRAIN_LOSS", "UPDATE_NORM", "ClientReply", "LedgerSyncAnswer",
    "LedgerSyncQuery", "RoundInstruction", "canonical_content", "global_arrays",
    "reply_ledger", "update_of",
]
