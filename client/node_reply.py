"""What a node's reply holds: its status, its ledger entries of this run, and after a round its
metrics (plus its partition id in simulation) and the clipped update Δ.

The first entry's `prev_hash` commits to the node's earlier chain, which stays on the node. The
reply's wire form is common/protocol's `ClientReply.to_record_dict`.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from client.local_round import RoundOutput
from client.node_settings import NodeSettings
from common.privacy.ledger import PrivacyLedger
from common.protocol import PARTITION_ID, ClientReply


def node_reply(
    status: str, reason: str = "", node: NodeSettings | None = None,
    ledger: PrivacyLedger | None = None, run_id: str = "", output: RoundOutput | None = None,
    spent: bool = False,
) -> ClientReply:
    """The reply; `spent`: an error reply whose round's spend was recorded before it failed."""
    entries = ledger.run_entries(node.node_id, run_id) if ledger and node else []
    metrics = None
    arrays = None
    if output is not None:
        extra = {PARTITION_ID: node.partition_id} if node and node.partition_id is not None \
            else {}
        metrics = {**output.metrics, **extra}
        if output.update is not None:
            arrays = ArrayRecord(output.update)
    return ClientReply(status=status, reason=reason, node=node.node_id if node else "",
                       ledger=[e.to_json() for e in entries], spent=spent, metrics=metrics,
                       arrays=arrays)
