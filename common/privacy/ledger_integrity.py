"""Tamper evidence of a privacy ledger file: both hash chains, sane values, the run's anchor.

Pure checks over the rows of one ledger file (common/privacy/ledger.py). Each problem names the
row (seq, node, round) and the check that failed, in plain words, so a privacy officer can go
straight to the first broken entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from common.privacy.accounting import ADD_REMOVE, LEGACY_RDP, PLD, REPLACE_ONE
from common.privacy.ledger import (
    CLIENT_LEVEL,
    CONFIRMATION,
    GAUSSIAN_NO_AMPLIFICATION,
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    LedgerEntry,
    LedgerRow,
    row_hash,
)
from common.run_layout import SUMMARY_FILE

_GUARANTEES = {RECORD_LEVEL, CLIENT_LEVEL}
_MECHANISMS = {POISSON_GAUSSIAN, GAUSSIAN_NO_AMPLIFICATION, CONFIRMATION}
# What a confirmation must repeat from the write-ahead entry it confirms.
_CONFIRMED_FIELDS = ("run_id", "round", "guarantee", "noise_multiplier", "sample_rate", "delta",
                     "accountant", "epsilon", "max_epsilon", "relation", "noise")
# The relation each guarantee's ε must be stated for, given what is released (a node's record
# count is released, so record-level neighbours are replace-one).
RELATION_OF = {RECORD_LEVEL: REPLACE_ONE, CLIENT_LEVEL: ADD_REMOVE}
_FIELD_TYPES = {f.name: str(f.type) for f in fields(LedgerEntry)}


@dataclass(frozen=True)
class Problem:
    """One failed check, in plain words; `seq`/`node_id`/`round` name the entry when known."""

    check: str  # entry-hash, row-seq, row-chain, row-hash, node-chain, type, value, anchor,
    # confirmation
    message: str
    seq: int | None = None
    node_id: str | None = None
    round: int | None = None

    def __str__(self) -> str:
        return self.message


def verify_chain(rows: Sequence[LedgerRow], withheld_starts: bool = False) -> list[Problem]:
    """Every integrity problem in file order; the first one names the first broken entry.

    Each link is compared with the *stored* hash it should point at, so one edit is reported
    where it happened rather than at every later row. With `withheld_starts` (a run's ledger:
    nodes send only the current run's entries), a node's entry may link to an entry that is
    not in the file at all — one the node kept to itself (another run's, before or in between;
    `withheld_chains` lists them). A link to an entry that *is* in the file must still be to
    the node's previous one, and a node's own ledger must be one unbroken chain from GENESIS.
    A deleted entry of this run shows as a broken row chain instead.
    """
    problems: list[Problem] = []
    by_row_hash = {r.row_hash: r for r in rows}
    by_entry_hash = {r.entry.hash: r for r in rows}
    previous: LedgerRow | None = None
    last_of_node: dict[Any, LedgerRow] = {}
    for row in rows:
        entry = row.entry

        def flag(check: str, text: str, row: LedgerRow = row) -> None:
            problems.append(Problem(check, f"{_where(row)}: {text}", row.seq,
                                    str(row.entry.node_id), _round_of(row)))

        type_errors = _type_errors(row)
        for text in type_errors:
            flag("type", text)
        if not type_errors and entry.computed_hash() != entry.hash:
            flag("entry-hash", "the entry's contents do not match its hash: a field (or the "
                 "hash) was changed after the node wrote it")
        expected_seq = previous.seq + 1 if previous else 1
        if row.seq != expected_seq:
            flag("row-seq", f"row numbers jump from {previous.seq} to {row.seq}: rows were "
                 "deleted or renumbered" if previous else f"row numbers start at {row.seq}, "
                 "not 1: earlier rows were deleted or renumbered")
        expected_prev = previous.row_hash if previous else GENESIS
        if row.row_prev != expected_prev:
            flag("row-chain", _row_link_text(row, previous, by_row_hash))
        if not type_errors and row.row_hash != row_hash(row.row_prev, entry.hash):
            flag("row-hash", "its row hash does not cover its link and entry hash: the row "
                 "hash or the link was altered")
        node_previous = last_of_node.get(entry.node_id)
        continues_withheld = withheld_starts and entry.prev_hash != GENESIS \
            and entry.prev_hash not in by_entry_hash
        if not continues_withheld and \
                entry.prev_hash != (node_previous.entry.hash if node_previous else GENESIS):
            flag("node-chain", _node_link_text(row, node_previous, by_entry_hash))
        if not type_errors:
            for text in _value_errors(entry):
                flag("value", text)
            if entry.is_confirmation:
                text = _confirmation_error(entry, node_previous)
                if text:
                    flag("confirmation", text)
        previous = row
        last_of_node[entry.node_id] = row
    return problems


def withheld_chains(rows: Sequence[LedgerRow]) -> dict[str, int]:
    """Node → how many of its entries here link to an entry the node kept to itself (its
    ε claims then include spend not shown here)."""
    present = {r.entry.hash for r in rows}
    gaps: dict[str, int] = {}
    for row in rows:
        if row.entry.prev_hash != GENESIS and row.entry.prev_hash not in present:
            gaps[str(row.entry.node_id)] = gaps.get(str(row.entry.node_id), 0) + 1
    return gaps


def check_anchor(
    ledger_head: Mapping[str, Any], summary_anchor: Mapping[str, Any] | None,
    source: str = SUMMARY_FILE,
) -> list[Problem]:
    """Compare the ledger's head with the anchor `source` recorded (summary.json when the run
    finished, checkpoint.json after each committed round).

    Only the anchor reveals a cut-off tail: deleting the last rows leaves both chains intact.
    """
    if summary_anchor is None:
        return []
    rows, head = summary_anchor.get("rows"), summary_anchor.get("head")
    if not isinstance(rows, int) or isinstance(rows, bool) or not isinstance(head, str):
        return [Problem("anchor", f"{source}'s ledger anchor is malformed: {summary_anchor}")]
    have = ledger_head["rows"]
    if have < rows:
        text = (f"the ledger has {have} rows but {source} recorded {rows}: the last "
                f"{rows - have} row(s) were cut off")
    elif have > rows:
        text = (f"the ledger has {have} rows but {source} recorded {rows}: rows were added "
                "or inserted afterwards")
    elif ledger_head["head"] != head:
        text = (f"the ledger's last row hash differs from the one {source} recorded: rows "
                "were altered or replaced")
    else:
        return []
    return [Problem("anchor", text)]


def _where(row: LedgerRow) -> str:
    return f"row {row.seq} (node '{row.entry.node_id}', round {row.entry.round})"


def _round_of(row: LedgerRow) -> int | None:
    value = row.entry.round
    return value if isinstance(value, int) else None


def _row_link_text(row: LedgerRow, previous: LedgerRow | None,
                   by_row_hash: Mapping[str, LedgerRow]) -> str:
    source = by_row_hash.get(row.row_prev)
    before = f"row {previous.seq}" if previous else "the start of the file"
    if source is not None and source is not row:
        return (f"its row link points at row {source.seq}, not at {before}: rows were "
                "reordered, or a row was inserted or deleted here")
    if row.row_prev == GENESIS:
        return f"it was written as the first row but follows {before}: rows were inserted"
    return (f"its row link points at no row in this file, not at {before}: the row before "
            "it was deleted, or the link was altered")


def _node_link_text(row: LedgerRow, node_previous: LedgerRow | None,
                    by_entry_hash: Mapping[str, LedgerRow]) -> str:
    node = row.entry.node_id
    expected = (f"node '{node}''s previous entry (row {node_previous.seq}, round "
                f"{node_previous.entry.round})" if node_previous
                else f"the start of node '{node}''s chain (it is the node's first entry here)")
    source = by_entry_hash.get(row.entry.prev_hash)
    if source is not None and source is not row:
        return (f"its entry link points at row {source.seq}, not at {expected}: node "
                "entries were reordered or one was inserted")
    return (f"its entry link does not point at {expected}: an earlier entry of this node "
            "is missing (deleted), or the link was altered")


def _confirmation_error(entry: LedgerEntry, node_previous: LedgerRow | None) -> str:
    """Why a confirmation does not confirm the node's entry right before it ('' if it does)."""
    if node_previous is None or node_previous.entry.is_confirmation:
        return ("a confirmation that follows no write-ahead entry of its node: it confirms "
                "nothing (inserted, or the entry it confirmed was deleted)")
    confirmed = node_previous.entry
    differ = [f for f in _CONFIRMED_FIELDS if getattr(entry, f) != getattr(confirmed, f)]
    if differ:
        return (f"the confirmation differs from the entry it confirms (row {node_previous.seq}) "
                f"in {', '.join(differ)}")
    return ""


def _type_errors(row: LedgerRow) -> list[str]:
    errors = []
    for name, kind in _FIELD_TYPES.items():
        value = getattr(row.entry, name)
        good = (isinstance(value, str) if kind == "str"
                else isinstance(value, int) and not isinstance(value, bool) if kind == "int"
                else isinstance(value, int | float) and not isinstance(value, bool))
        if not good:
            errors.append(f"field {name} holds {value!r}, not a {kind}")
    for name in ("row_prev", "row_hash"):
        if not isinstance(getattr(row, name), str):
            errors.append(f"column {name} holds {getattr(row, name)!r}, not a str")
    return errors


def _value_errors(entry: LedgerEntry) -> list[str]:
    """Values no honest writer produces; `not (...)` so that NaN fails every check."""
    checks = [
        (entry.guarantee in _GUARANTEES, f"unknown guarantee {entry.guarantee!r}"),
        (entry.mechanism in _MECHANISMS, f"unknown mechanism {entry.mechanism!r}"),
        (entry.accountant == (LEGACY_RDP if entry.is_legacy else PLD),
         f"unknown accountant {entry.accountant!r}"
         + (" for a format-1 entry" if entry.is_legacy else "")),
        (entry.is_legacy or entry.relation == RELATION_OF.get(entry.guarantee),
         (f"{entry.guarantee} ε stated for relation {entry.relation!r}; it must be "
         f"{RELATION_OF.get(entry.guarantee)!r} (the relation that holds for what is "
         "released)")),
        (entry.is_legacy or entry.noise in (SECRET_NOISE, SEEDED_NOISE),
         f"unknown noise source {entry.noise!r}"),
        (0 < entry.delta < 1, f"δ={entry.delta} is not in (0, 1)"),
        (0 < entry.sample_rate <= 1, f"sample rate q={entry.sample_rate} is not in (0, 1]"),
        (entry.mechanism != GAUSSIAN_NO_AMPLIFICATION or entry.sample_rate == 1,
         f"mechanism {GAUSSIAN_NO_AMPLIFICATION} must account with q=1, not "
         + f"q={entry.sample_rate} (that would claim amplification it does not have)"),
        (0 <= entry.noise_multiplier < math.inf,
         f"noise multiplier σ={entry.noise_multiplier} is not a finite number ≥ 0"),
        (entry.steps >= 0, f"steps={entry.steps} is negative"),
        (not entry.is_confirmation or entry.steps == 0,
         f"a confirmation must have 0 steps, not {entry.steps} (it is never spend)"),
        (entry.round >= 0, f"round={entry.round} is negative"),
        (entry.epsilon >= 0, f"claimed ε={entry.epsilon} is not ≥ 0"),
        (entry.max_epsilon >= 0, f"max_epsilon={entry.max_epsilon} is not ≥ 0"),
        (bool(entry.node_id.strip()), "empty node id"),
    ]
    errors = [text for good, text in checks if not good]
    try:
        datetime.fromisoformat(entry.timestamp)
    except ValueError:
        errors.append(f"timestamp {entry.timestamp!r} is not an ISO 8601 time")
    return errors
