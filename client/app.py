"""fedssl ClientApp: receives global weights, trains the SSL task under DP, replies with Δ.

Each handler decodes the message (common/protocol), calls a plain function
(client/train_message.py) and encodes the reply it returns.

Every reply (trained, refused or error) carries the node's status, its ledger id and its ledger
entries of this run (the first one's `prev_hash` commits to the node's earlier chain, which
stays on the node), so the server's RUN_DIR ledger can verify this run's spend. A query message
(`ledger-sync`, sent by the server after the last round) returns the same, without training:
spend whose reply was lost still reaches the run's reports.

What leaves the node, in full: Δ (clipped, DP-SGD output), its record count and the DP
parameters derived from it (public under the replace-one relation ε is stated for), its ε
claims and budget, and this run's ledger entries (timestamps to the hour). Not: the training
loss (unless the simulation switch `release-train-loss` is on), timings, or the DP seed.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_aggregation_mod
from client.train_message import answer_ledger_sync, train_round
from common.protocol import LedgerSyncQuery, RoundInstruction, global_arrays

app = ClientApp()


# secure-aggregation=true: Flower's SecAgg+ mod masks Δ (client/secure_aggregation.py)
@app.train(mods=[secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    """One federated round on this node's records (or a refusal / error status)."""
    instruction = RoundInstruction.from_record_dict(msg.content)
    reply = train_round(instruction, lambda: global_arrays(msg.content).to_torch_state_dict(),
                        context)
    return Message(content=reply.to_record_dict(), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """`ledger-sync`: this run's ledger entries, without training (or an error status)."""
    request = LedgerSyncQuery.from_record_dict(msg.content)
    reply = answer_ledger_sync(request, context)
    return Message(content=reply.to_record_dict(), reply_to=msg)
