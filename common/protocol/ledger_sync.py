"""The ledger sync: the server's query after the last round, and a node's answer.

The query is a Flower query message whose ConfigRecord QUERY_KEY says `query = LEDGER_SYNC`,
with the run id and the simulation state root. The answer is a reply (common/protocol/reply.py)
with status STATUS_LEDGER: the node's name and its ledger entries of this run; the node trains
nothing (client/app.py `query`, server/ledger_sync.py `sync_ledgers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, RecordDict

from common.protocol.keys import (
    LEDGER_SYNC,
    NODE,
    QUERY,
    QUERY_KEY,
    REPLY_KEY,
    RUN_ID,
    SIM_STATE_DIR,
    STATUS,
    STATUS_LEDGER,
)
from common.protocol.reply import ClientReply, reply_ledger


@dataclass(frozen=True)
class LedgerSyncQuery:
    """The server asks a node for its ledger entries of run `run_id`."""

    run_id: str = ""
    sim_state_dir: str | None = None  # simulation: the root of simulated nodes' state

    def to_record_dict(self) -> RecordDict:
        """The query message's content (a None sim_state_dir is left out)."""
        values = {QUERY: LEDGER_SYNC, RUN_ID: self.run_id, SIM_STATE_DIR: self.sim_state_dir}
        return RecordDict({QUERY_KEY: ConfigRecord(
            {key: value for key, value in values.items() if value is not None})})

    @classmethod
    def from_record_dict(cls, content: RecordDict) -> LedgerSyncQuery | None:
        """The query a message's content asks; None when it is no ledger-sync query."""
        request = content.config_records.get(QUERY_KEY)
        if request is None or request.get(QUERY) != LEDGER_SYNC:
            return None
        sim_state_dir = request.get(SIM_STATE_DIR)
        return cls(run_id=str(request.get(RUN_ID, "")),
                   sim_state_dir=None if sim_state_dir is None else str(sim_state_dir))


@dataclass(frozen=True)
class LedgerSyncAnswer:
    """A node's answer: its ledger name and its entries of the run (JSON, unchecked)."""

    node: str
    ledger: list[str] = field(default_factory=list)

    def to_record_dict(self) -> RecordDict:
        """The answer's wire form: a reply with status STATUS_LEDGER."""
        return ClientReply(status=STATUS_LEDGER, node=self.node,
                           ledger=list(self.ledger)).to_record_dict()

    @classmethod
    def from_record_dict(cls, content: RecordDict) -> LedgerSyncAnswer | None:
        """The answer a reply's content carries; None when it is not a ledger answer."""
        info = content.config_records.get(REPLY_KEY)
        if info is None or str(info.get(STATUS)) != STATUS_LEDGER:
            return None
        return cls(node=str(info.get(NODE, "")), ledger=reply_ledger(content))
