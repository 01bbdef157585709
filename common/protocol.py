"""Names both sides of a fedssl message agree on, written once.

A client reply carries a ConfigRecord under REPLY_KEY: `status` (STATUS_*), `reason`, `node`
(the node's ledger id) and `ledger` (its entries of this run, as JSON strings), beside
"metrics" and, when it trained, "arrays" (the clipped update Δ). The server's ledger sync is a
query message whose ConfigRecord QUERY_KEY says `query = LEDGER_SYNC` (plus `sim-state-dir`).
"""

from __future__ import annotations

REPLY_KEY = "fedssl"
QUERY_KEY = "fedssl-query"
LEDGER_SYNC = "ledger-sync"
STATUS_TRAINED = "trained"
STATUS_REFUSED = "refused"
STATUS_ERROR = "error"
STATUS_LEDGER = "ledger"  # a ledger-sync answer
