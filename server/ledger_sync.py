"""Which nodes' spend the server has seen, and the training-free ledger sync after the last round.

A node writes its spend before it trains; the server learns of it only from a reply. A reply
can be lost (the node's process died after training, a timeout dropped it, a Flower error
carried no content), and then the run's reports would show less than the node's own ledger.
So the server counts, per node and round, the spends the replies it got imply (one per
"trained" reply, one per "error" reply that says it spent) plus one per train message that got
no reply at all (`LedgerCoverage`). After the last round it asks every node it sampled for its
ledger once more (`sync_ledgers`, a Flower query message; the node trains nothing), and asks
again, until a timeout, while a node's ledger holds fewer spends of a round than that count: a
node training late writes its spend within seconds. A node still short then is reported with
"≥": its own ledger may hold more than the server's copy (or a message never reached it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from flwr.app import Message, MessageType
from flwr.common import log
from flwr.serverapp import Grid

from common.privacy.ledger import (
    FEDERATION_NODE,
    RECORD_LEVEL,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
)
from common.protocol import LedgerSyncAnswer, LedgerSyncQuery

SYNC_TIMEOUT_S = 60.0
SYNC_RETRY_S = 2.0


@dataclass
class LedgerCoverage:
    """Per Flower node id: its ledger name, and per round the spends the server must see."""

    run_id: str = ""
    names: dict[int, str] = field(default_factory=dict)
    sampled: set[int] = field(default_factory=set)
    implied: dict[int, Counter[int]] = field(default_factory=dict)  # replies that spent
    unanswered: dict[int, Counter[int]] = field(default_factory=dict)  # messages, no reply
    unknown_history: bool = False  # a resumed server: who was sampled before is unknown
    synced: set[str] = field(default_factory=set)  # ledger names that answered the sync

    def sending(self, node_ids: set[int], server_round: int) -> None:
        """Train messages of `server_round` are about to go to these nodes."""
        for node in node_ids:
            self.sampled.add(node)
            self.unanswered.setdefault(node, Counter())[server_round] += 1

    def replied(self, node_id: int, name: str, server_round: int, spent: bool) -> None:
        """A fedssl reply of this node for `server_round` arrived; `spent`: it says it
        recorded the round's spend (status trained, or an error after its write-ahead)."""
        if name:
            self.names[node_id] = name
        waiting = self.unanswered.setdefault(node_id, Counter())
        if waiting[server_round] > 0:
            waiting[server_round] -= 1
        if spent:
            self.implied.setdefault(node_id, Counter())[server_round] += 1

    def missing(self, ledger: PrivacyLedger) -> dict[str, str]:
        """Nodes whose ledger copy may lack spend: node (ledger name, else `node-<id>`) →
        why, in words. Either it holds fewer spends of a round than this server process must
        expect, or (after a restart, when earlier rounds are unknown) the node did not answer
        the ledger sync."""
        short = {}
        spends: dict[str, Counter[int]] = {}
        for entry in ledger.spends():  # one read of the ledger for every node
            if entry.run_id == self.run_id and entry.guarantee == RECORD_LEVEL \
                    and entry.node_id != FEDERATION_NODE:
                spends.setdefault(entry.node_id, Counter())[entry.round] += 1
        for node in sorted(set(self.unanswered) | set(self.implied)):
            need = self.implied.get(node, Counter()) + self.unanswered.get(node, Counter())
            if not need:
                continue
            have = spends.get(self.label(node), Counter())
            rounds = sorted(r for r, n in need.items() if have[r] < n)
            if rounds:
                short[self.label(node)] = (
                    "no reply, and no spend in its ledger at the ledger sync, for round(s) "
                    f"{', '.join(map(str, rounds))}")
        if self.unknown_history:
            for name in sorted(set(spends) - self.synced):
                short.setdefault(name, "the server restarted during this run and this node "
                                       "did not answer the ledger sync: rounds before the "
                                       "restart may hold spend the server never saw")
        return short

    def label(self, node_id: int) -> str:
        """The node's ledger name when known, else `node-<flower id>`."""
        return self.names.get(node_id, f"node-{node_id}")


def ledger_entries(texts: list[str], node: str) -> list[LedgerEntry]:
    """The ledger entries (JSON) a reply of `node` carries: the sender's own. Malformed ones,
    and ones in another node's name (`federation` included), are logged and dropped: a node
    must not write into another node's chain, nor into the server's own."""
    entries = []
    for text in texts:
        try:
            entry = LedgerEntry.from_json(text)
        except LedgerError as err:
            log(30, "node %s sent a malformed ledger entry: %s", node, err)
            continue
        if entry.node_id != node or node == FEDERATION_NODE:
            log(30, "node %s sent a ledger entry in the name of '%s': dropped", node,
                entry.node_id)
            continue
        entries.append(entry)
    return entries


def sync_ledgers(grid: Grid, coverage: LedgerCoverage, ledger: PrivacyLedger,
                 sim_state_dir: str, run_id: str, timeout: float = SYNC_TIMEOUT_S) -> int:
    """Ask the nodes sampled this run (every connected node after a resume) for their ledgers.

    Stores what arrives in the run ledger; asks again, until `timeout`, the nodes whose copy
    is still short (`LedgerCoverage.missing`). Returns how many nodes answered at least once.
    """
    connected = set(grid.get_node_ids())
    targets = connected if coverage.unknown_history else coverage.sampled & connected
    deadline = time.monotonic() + timeout
    answered: set[int] = set()
    record = LedgerSyncQuery(run_id=run_id, sim_state_dir=sim_state_dir).to_record_dict()
    while targets:
        messages = [Message(content=record, dst_node_id=node, message_type=MessageType.QUERY)
                    for node in sorted(targets)]
        replies = grid.send_and_receive(messages, timeout=max(deadline - time.monotonic(), 1))
        for reply in replies:
            node_id = reply.metadata.src_node_id
            answer = None if reply.has_error() else LedgerSyncAnswer.from_record_dict(
                reply.content)
            if answer is None:
                log(30, "ledger sync: node-%d did not answer: %s", node_id,
                    reply.error.reason if reply.has_error() else "not a ledger reply")
                continue
            name = answer.node or f"node-{node_id}"
            coverage.names[node_id] = name
            coverage.synced.add(name)
            ledger.add_many(ledger_entries(answer.ledger, name))
            answered.add(node_id)
        short = set(coverage.missing(ledger))
        targets = {n for n in connected if coverage.label(n) in short}
        if not targets or time.monotonic() + SYNC_RETRY_S >= deadline:
            break
        time.sleep(SYNC_RETRY_S)  # a node training late writes its spend within seconds
    return len(answered)
