"""Which nodes' spend the server has seen, and the training-free ledger sync after the last round.

A node writes its spend before it trains; the server learns of it only from a reply. A reply
can be lost (the node's process died after training, a timeout dropped it, a Flower error
carried no content), and then the run's reports would show less than the node's own ledger.
So the server tracks, per Flower node, the last message it sent and the last reply that
carried the node's ledger (`LedgerCoverage`), and after the last round it asks every node it
ever sampled for its ledger once more (`sync_ledgers`, a Flower query message; the node trains
nothing). A node that answers neither is reported with "≥": its own ledger may hold more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from common.privacy_ledger import LedgerEntry, LedgerError, PrivacyLedger
from common.wire_format import LEDGER_SYNC, QUERY_KEY, REPLY_KEY

SYNC_TIMEOUT_S = 120.0


@dataclass
class LedgerCoverage:
    """Per Flower node id: its ledger name, the last message sent, the last ledger heard."""

    names: dict[int, str] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)  # node → sequence number of last send
    heard: dict[int, int] = field(default_factory=dict)  # node → last send it answered
    unknown_history: bool = False  # a resumed server: who was sampled before is unknown
    _counter: int = 0

    def sending(self, node_ids: Iterable[int]) -> None:
        """Messages are about to go to these nodes."""
        self._counter += 1
        for node in node_ids:
            self.sent[node] = self._counter

    def answered(self, node_id: int, name: str) -> None:
        """A reply of this node carried its ledger (as of now)."""
        if name:
            self.names[node_id] = name
        self.heard[node_id] = self.sent.get(node_id, self._counter)

    def incomplete(self) -> dict[int, str]:
        """Nodes whose latest spend may be missing from the server's copy: node id → why."""
        missing = {}
        for node, last in self.sent.items():
            if self.heard.get(node, 0) < last:
                missing[node] = ("its last reply never arrived (timeout, crash or Flower error) "
                                 "and it did not answer the ledger sync")
        return missing

    def label(self, node_id: int) -> str:
        """The node's ledger name when known, else `node-<flower id>`."""
        return self.names.get(node_id, f"node-{node_id}")


def reply_entries(content: RecordDict, node: str) -> list[LedgerEntry]:
    """The ledger entries a fedssl reply carries (malformed ones are logged, not trusted)."""
    info = content.config_records.get(REPLY_KEY)
    entries = []
    for text in (info.get("ledger", []) if info is not None else []):
        try:
            entries.append(LedgerEntry.from_json(str(text)))
        except LedgerError as err:
            log(30, "node %s sent a malformed ledger entry: %s", node, err)
    return entries


def sync_ledgers(grid: Grid, coverage: LedgerCoverage, ledger: PrivacyLedger,
                 sim_state_dir: str, timeout: float = SYNC_TIMEOUT_S) -> int:
    """Ask every node ever sampled (every connected node after a resume) for its ledger.

    Stores what arrives in the run ledger and marks those nodes complete; returns how many
    nodes answered. Training-free: a node answers from its ledger alone.
    """
    connected = set(grid.get_node_ids())
    targets = sorted(connected if coverage.unknown_history else set(coverage.sent) & connected)
    if not targets:
        return 0
    coverage.sending([])  # a new sequence number: only answers to this sync count
    record = RecordDict({QUERY_KEY: ConfigRecord({"query": LEDGER_SYNC,
                                                  "sim-state-dir": sim_state_dir})})
    messages = [Message(content=record, dst_node_id=node, message_type=MessageType.QUERY)
                for node in targets]
    answered = 0
    new_entries: list[LedgerEntry] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(30, "ledger sync: node-%d failed: %s", node_id, reply.error.reason)
            continue
        info = reply.content.config_records.get(REPLY_KEY)
        if info is None:
            continue
        name = str(info.get("node", "")) or f"node-{node_id}"
        new_entries += reply_entries(reply.content, name)
        if str(info.get("status")) == "ledger":
            coverage.answered(node_id, name)
            answered += 1
    ledger.add_many(new_entries)
    return answered
