"""A node's reply: encoded by the client, parsed and validated by the server (one schema).

Every reply (trained, refused or error) carries a ConfigRecord REPLY_KEY with the node's
status, its ledger id and its ledger entries of this run, beside a MetricRecord METRICS_KEY
(trained and refused replies) and, when it trained, an ArrayRecord ARRAYS_KEY: the clipped
update Δ.

A reply is hostile or broken until proven otherwise. `ClientReply.parse` checks the fedssl
record (status, reason, node name, ledger, spent flag) and, for a trained reply, the metrics the
server uses — the aggregation weight first: a NaN, zero, negative or absurd `num-examples` would
turn FedAvg's convex combination into something unbounded (a weight of −99 beside 100 moved
every coordinate ~170× past the clip bound) or crash it. Anything else a reply carries is
dropped. The strategy then rebuilds each accepted reply in one canonical shape
(`canonical_content`), so Flower's consistency checks (same record and metric keys in every
reply) can never abort a round because one node sent an extra or missing key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.protocol.keys import (
    ARRAYS_KEY,
    DELTA,
    EPSILON,
    LEDGER,
    LOCAL_STEPS,
    MAX_EPSILON,
    METRICS_KEY,
    NODE,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PARTITION_ID,
    REASON,
    REPLY_KEY,
    SAMPLE_RATE,
    SPENT,
    STATUS,
    STATUS_ERROR,
    STATUS_REFUSED,
    STATUS_TRAINED,
    TRAIN_LOSS,
    UPDATE_NORM,
)

MAX_WEIGHT = 2**31 - 1  # records at one node; far above any real one, far below overflow
MAX_NAME = 128
MAX_REASON = 500

# key → (check, what it must be); every one is required in a trained reply
_REQUIRED: dict[str, tuple[Any, str]] = {
    NUM_EXAMPLES: (lambda v: _is_int(v) and 1 <= v <= MAX_WEIGHT,
                   f"an integer in [1, {MAX_WEIGHT}]"),
    # ε is infinite, honestly, for a run without noise (noise-multiplier=0).
    EPSILON: (lambda v: _is_number(v) and v >= 0, "a number >= 0 (or infinity)"),
    NOISE_MULTIPLIER: (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    SAMPLE_RATE: (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    LOCAL_STEPS: (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    UPDATE_NORM: (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    DELTA: (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    MAX_EPSILON: (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
}
_OPTIONAL: dict[str, tuple[Any, str]] = {
    PARTITION_ID: (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    TRAIN_LOSS: (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
}
# The metrics every accepted reply carries into Flower's aggregation, in this one shape.
CANONICAL_METRICS = (NUM_EXAMPLES, EPSILON)


@dataclass(frozen=True)
class ClientReply:
    """A node's reply. Parsed on the server, it passed the schema (the update tensors are
    checked separately, server/update_fedavg.py)."""

    status: str  # STATUS_TRAINED, STATUS_REFUSED, STATUS_ERROR or STATUS_LEDGER
    reason: str = ""  # why it refused or failed
    node: str = ""  # its ledger name ("" when it could not even open its ledger)
    ledger: list[str] = field(default_factory=list)  # its entries of this run, as JSON
    spent: bool = False  # an error reply says it recorded its round's spend before failing
    # Sent: a trained or refused reply's metrics (None: no MetricRecord). Parsed: a trained
    # reply's metrics, validated and only the known ones; None for any other status.
    metrics: dict[str, float | int] | None = None
    arrays: ArrayRecord | None = None  # the clipped update Δ of a trained reply

    def to_record_dict(self) -> RecordDict:
        """The reply's wire form (the client encodes it)."""
        info = ConfigRecord({
            STATUS: self.status,
            REASON: self.reason,
            NODE: self.node,
            LEDGER: list(self.ledger),
            SPENT: self.spent,
        })
        content = RecordDict({REPLY_KEY: info})
        if self.metrics is not None:
            content[METRICS_KEY] = MetricRecord(self.metrics)
        if self.arrays is not None:
            content[ARRAYS_KEY] = self.arrays
        return content

    @classmethod
    def parse(cls, content: RecordDict, update_sent: bool = True) -> ClientReply | str:
        """The reply, validated; or why it cannot be used (one line, for the round's log).

        `update_sent=False` (secure aggregation): the Δ went into the masked sum, so a trained
        reply carries no ArrayRecord with data, and any other record is ignored here.
        """
        info = content.config_records.get(REPLY_KEY)
        if info is None:
            return "not a fedssl reply (no ledger)"
        problem = _info_problem(info)
        if problem:
            return f"malformed fedssl record: {problem}"
        status = str(info[STATUS])
        reply = cls(node=str(info[NODE]).strip(), status=status,
                    reason=str(info[REASON])[:MAX_REASON], spent=bool(info.get(SPENT, False)),
                    ledger=list(info.get(LEDGER, [])))
        if status != STATUS_TRAINED:
            return reply
        if not update_sent:
            if METRICS_KEY not in content.metric_records:
                return f"a trained reply must carry a MetricRecord '{METRICS_KEY}'"
            if any(len(record) > 0 for record in content.array_records.values()):
                return "under secure aggregation a reply must carry no update in the clear"
            content = RecordDict({METRICS_KEY: content.metric_records[METRICS_KEY],
                                  ARRAYS_KEY: ArrayRecord()})
        if set(content.metric_records) != {METRICS_KEY} or set(content.array_records) != {
                ARRAYS_KEY}:
            return (f"a trained reply must carry exactly one MetricRecord '{METRICS_KEY}' and "
                    f"one ArrayRecord '{ARRAYS_KEY}', got {sorted(content.metric_records)} and "
                    f"{sorted(content.array_records)}")
        metrics = dict(content.metric_records[METRICS_KEY])
        for key, (check, rule) in _REQUIRED.items():
            if key == UPDATE_NORM and not update_sent:
                continue  # ‖Δ‖ is a statistic of the update: not sent under secure aggregation
            if key not in metrics:
                return f"metric '{key}' is missing"
            if not check(metrics[key]):
                return f"metric '{key}' must be {rule}, got {metrics[key]!r}"
        for key, (check, rule) in _OPTIONAL.items():
            if key in metrics and not check(metrics[key]):
                return f"metric '{key}' must be {rule}, got {metrics[key]!r}"
        kept = {k: metrics[k] for k in (*_REQUIRED, *_OPTIONAL) if k in metrics
                and (update_sent or k != UPDATE_NORM)}
        return cls(node=reply.node, status=status, reason=reply.reason, spent=reply.spent,
                   ledger=reply.ledger, metrics=kept, arrays=content.array_records[ARRAYS_KEY])


def reply_ledger(content: RecordDict) -> list[str]:
    """The ledger entries (JSON) a reply's fedssl record carries, unchecked: [] without one.
    `server/ledger_sync.py` checks each entry and whose it is."""
    info = content.config_records.get(REPLY_KEY)
    return [str(text) for text in (info.get(LEDGER, []) if info is not None else [])]


def canonical_content(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """The one shape every accepted reply has when Flower aggregates it."""
    return RecordDict({ARRAYS_KEY: arrays,
                       METRICS_KEY: MetricRecord({k: metrics[k] for k in CANONICAL_METRICS})})


def update_of(content: RecordDict) -> ArrayRecord:
    """The update Δ of a reply in canonical shape."""
    return content[ARRAYS_KEY]  # type: ignore[return-value]


def _info_problem(info: ConfigRecord) -> str:
    for key in (STATUS, REASON, NODE):
        if not isinstance(info.get(key), str):
            return f"'{key}' must be a string"
    if info[STATUS] not in (STATUS_TRAINED, STATUS_REFUSED, STATUS_ERROR):
        return f"unknown status {str(info[STATUS])[:40]!r}"
    if len(info[NODE]) > MAX_NAME:
        return f"node name longer than {MAX_NAME} characters"
    ledger = info.get(LEDGER, [])
    if not isinstance(ledger, list) or not all(isinstance(e, str) for e in ledger):
        return f"'{LEDGER}' must be a list of strings"
    if not isinstance(info.get(SPENT, False), bool):
        return f"'{SPENT}' must be true or false"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and not math.isnan(value)
