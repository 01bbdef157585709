"""The names of fedssl's wire format, written once: every string key of a message is here.

The types that use them (`RoundInstruction`, `ClientReply`, `LedgerSyncQuery`,
`LedgerSyncAnswer`) live beside this module; client/ and server/ use the types and these names,
never the strings.
"""

from __future__ import annotations

# --- records of a message's RecordDict --------------------------------------------------------
# A train message: Flower's FedAvg builds it with these two keys (its `configrecord_key` and
# `arrayrecord_key`, whose defaults they are; the server passes them explicitly).
CONFIG_KEY = "config"  # the RoundInstruction
ARRAYS_KEY = "arrays"  # the global weights; in a trained reply, the clipped update Δ
METRICS_KEY = "metrics"  # a reply's MetricRecord
REPLY_KEY = "fedssl"  # a reply's ConfigRecord: status, reason, node, ledger, spent
QUERY_KEY = "fedssl-query"  # a query message's ConfigRecord

# --- the RoundInstruction (ConfigRecord CONFIG_KEY) -------------------------------------------
SERVER_ROUND = "server-round"  # Flower's FedAvg.configure_train writes it too
ATTEMPT = "attempt"  # short-round=retry: a retried attempt of the same round
RUN_ID = "run-id"  # the server's RUN_DIR ledger run id
TASK = "task"
SIM_STATE_DIR = "sim-state-dir"  # simulation: where simulated nodes keep their ledgers
PUBLIC_INPUTS_SHA256 = "public-inputs-sha256"  # the server's public inputs (vocabulary)

# --- a reply (ConfigRecord REPLY_KEY) ----------------------------------------------------------
STATUS = "status"
REASON = "reason"
NODE = "node"  # the node's ledger id
LEDGER = "ledger"  # its ledger entries of this run, as JSON strings
SPENT = "spent"  # an error reply whose round's spend was recorded before it failed
STATUS_TRAINED = "trained"
STATUS_REFUSED = "refused"
STATUS_ERROR = "error"
STATUS_LEDGER = "ledger"  # a ledger-sync answer

# --- the ledger-sync query (ConfigRecord QUERY_KEY; also RUN_ID and SIM_STATE_DIR) -------------
QUERY = "query"
LEDGER_SYNC = "ledger-sync"

# --- a reply's metrics (MetricRecord METRICS_KEY) ----------------------------------------------
NUM_EXAMPLES = "num-examples"  # the aggregation weight (FedAvg's `weighted_by_key`)
EPSILON = "epsilon"
PROJECTED_EPSILON = "projected-epsilon"  # a refusal: ε the round would have reached
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
LOCAL_STEPS = "local-steps"
UPDATE_NORM = "update-norm"
DELTA = "delta"
MAX_EPSILON = "max-epsilon"
PARTITION_ID = "partition-id"  # simulated nodes only
TRAIN_LOSS = "train-loss"  # simulation switch release-train-loss only
