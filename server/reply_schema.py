"""What a client reply must look like before any of it is used: one schema, checked in full.

A reply is hostile or broken until proven otherwise. `parse_reply` checks the fedssl record
(status, reason, node name, ledger, spent flag) and, for a trained reply, the metrics the server
uses — the aggregation weight first: a NaN, zero, negative or absurd `num-examples` would turn
FedAvg's convex combination into something unbounded (a weight of −99 beside 100 moved every
coordinate ~170× past the clip bound) or crash it. Anything else a reply carries is dropped.
The strategy then rebuilds each accepted reply in one canonical shape (`canonical_content`), so
Flower's consistency checks (same record and metric keys in every reply) can never abort a
round because one node sent an extra or missing key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.protocol import (
    REPLY_KEY,
    STATUS_ERROR,
    STATUS_REFUSED,
    STATUS_TRAINED,
)

MAX_WEIGHT = 2**31 - 1  # records at one node; far above any real one, far below overflow
MAX_NAME = 128
MAX_REASON = 500
METRICS_KEY = "metrics"
ARRAYS_KEY = "arrays"

# key → (check, what it must be); every one is required in a trained reply
_REQUIRED: dict[str, tuple[Any, str]] = {
    "num-examples": (lambda v: _is_int(v) and 1 <= v <= MAX_WEIGHT,
                     f"an integer in [1, {MAX_WEIGHT}]"),
    # ε is infinite, honestly, for a run without noise (noise-multiplier=0).
    "epsilon": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (or infinity)"),
    "noise-multiplier": (lambda v: _is_number(v) and 0 <= v < math.inf,
                         "a finite number >= 0"),
    "sample-rate": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "local-steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "update-norm": (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    "delta": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "max-epsilon": (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
}
_OPTIONAL: dict[str, tuple[Any, str]] = {
    "partition-id": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "train-loss": (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
}
# The metrics every accepted reply carries into Flower's aggregation, in this one shape.
CANONICAL_METRICS = ("num-examples", "epsilon")


@dataclass(frozen=True)
class Reply:
    """A reply that passed the schema (the update tensors are checked separately)."""

    node: str  # its ledger name ("" when it could not even open its ledger)
    status: str
    reason: str
    spent: bool  # an error reply says it recorded its round's spend before failing
    metrics: dict[str, float | int]  # validated; empty unless trained
    arrays: ArrayRecord | None


def parse_reply(msg: Message) -> Reply | str:
    """The reply, validated; or why it cannot be used (one line, for the round's log)."""
    content = msg.content
    info = content.config_records.get(REPLY_KEY)
    if info is None:
        return "not a fedssl reply (no ledger)"
    problem = _info_problem(info)
    if problem:
        return f"malformed fedssl record: {problem}"
    status = str(info["status"])
    reply = Reply(node=str(info["node"]).strip(), status=status,
                  reason=str(info["reason"])[:MAX_REASON], spent=bool(info.get("spent", False)),
                  metrics={}, arrays=None)
    if status != STATUS_TRAINED:
        return reply
    if set(content.metric_records) != {METRICS_KEY} or set(content.array_records) != {
            ARRAYS_KEY}:
        return (f"a trained reply must carry exactly one MetricRecord '{METRICS_KEY}' and one "
                f"ArrayRecord '{ARRAYS_KEY}', got {sorted(content.metric_records)} and "
                f"{sorted(content.array_records)}")
    metrics = dict(content.metric_records[METRICS_KEY])
    for key, (check, rule) in _REQUIRED.items():
        if key not in metrics:
            return f"metric '{key}' is missing"
        if not check(metrics[key]):
            return f"metric '{key}' must be {rule}, got {metrics[key]!r}"
    for key, (check, rule) in _OPTIONAL.items():
        if key in metrics and not check(metrics[key]):
            return f"metric '{key}' must be {rule}, got {metrics[key]!r}"
    kept = {k: metrics[k] for k in (*_REQUIRED, *_OPTIONAL) if k in metrics}
    return Reply(node=reply.node, status=status, reason=reply.reason, spent=reply.spent,
                 metrics=kept, arrays=content.array_records[ARRAYS_KEY])


def canonical_content(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """The one shape every accepted reply has when Flower aggregates it."""
    return RecordDict({ARRAYS_KEY: arrays,
                       METRICS_KEY: MetricRecord({k: metrics[k] for k in CANONICAL_METRICS})})


def _info_problem(info: ConfigRecord) -> str:
    for key in ("status", "reason", "node"):
        if not isinstance(info.get(key), str):
            return f"'{key}' must be a string"
    if info["status"] not in (STATUS_TRAINED, STATUS_REFUSED, STATUS_ERROR):
        return f"unknown status {str(info['status'])[:40]!r}"
    if len(info["node"]) > MAX_NAME:
        return f"node name longer than {MAX_NAME} characters"
    ledger = info.get("ledger", [])
    if not isinstance(ledger, list) or not all(isinstance(e, str) for e in ledger):
        return "'ledger' must be a list of strings"
    if not isinstance(info.get("spent", False), bool):
        return "'spent' must be true or false"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and not math.isnan(value)
