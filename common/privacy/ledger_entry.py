"""One privacy-ledger entry: its fields, its hash, and how it travels (the ledger's format).

A node hashes each entry it writes (SHA-256 of the canonical JSON of every field but the hash);
entries chain per node through `prev_hash`, and rows chain per file (common/privacy/ledger.py
stores them). Format 2 added `relation` (the neighbouring relation the claimed ε is stated for)
and `noise` (where the DP noise came from: "secret", or "seeded" from the run seed, which means
no DP guarantee). Format-1 entries leave both empty, and the hash covers them only when set, so
old entries keep their hashes. Timestamps are kept to the hour: a write-ahead entry and its
confirmation to the microsecond would time the training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMAT_VERSION = 2
GENESIS = "0" * 64
RECORD_LEVEL = "record-level"
CLIENT_LEVEL = "client-level"
POISSON_GAUSSIAN = "poisson-subsampled-gaussian"
GAUSSIAN_NO_AMPLIFICATION = "gaussian-no-amplification"
FEDERATION_NODE = "federation"  # node id of the server's client-level DP events
# Mechanism of a confirmation entry: "the write-ahead entry before me completed". Not a
# privacy mechanism; it never spends (history() and the audit leave it out).
CONFIRMATION = "write-ahead-confirmed"
SECRET_NOISE = "secret"  # noise and sampling from a per-message secret source
SEEDED_NOISE = "seeded"  # reproducible from the run seed: no DP guarantee (simulation only)
V2_FIELDS = ("relation", "noise")  # hashed only when set (format-1 entries leave them empty)


class LedgerError(RuntimeError):
    """The ledger file cannot be read or written (corrupt, wrong format, not SQLite)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One privacy-consuming event and the cumulative ε of its node's guarantee after it.

    `epsilon` is what the writer claims: ε(δ) of all of this node's events of the same
    guarantee up to and including this one, with `accountant`. `max_epsilon` is the node's
    budget at the time (0 = none).
    """

    run_id: str
    round: int
    node_id: str
    guarantee: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon: float
    max_epsilon: float
    timestamp: str
    prev_hash: str
    hash: str = ""
    relation: str = ""  # format 2: "replace-one" / "add-remove"; "" in format-1 entries
    noise: str = ""  # format 2: "secret" / "seeded"; "" in format-1 entries (seeded)

    @property
    def is_confirmation(self) -> bool:
        """True for a confirmation entry (never spend), False for a privacy-consuming event."""
        return self.mechanism == CONFIRMATION

    @property
    def is_legacy(self) -> bool:
        """Written in format 1: add/remove-one RDP claim, noise seeded from the run seed."""
        return not self.relation and not self.noise

    @property
    def reproducible_noise(self) -> bool:
        """Its noise can be recomputed by whoever knows the run seed: no DP guarantee."""
        return self.noise != SECRET_NOISE

    def body(self) -> dict[str, Any]:
        """Every field except `hash` (and unset format-2 fields): what the hash covers."""
        fields = dataclasses.asdict(self)
        del fields["hash"]
        for name in V2_FIELDS:
            if fields[name] == "":
                del fields[name]
        return fields

    def computed_hash(self) -> str:
        """SHA-256 of the canonical JSON of `body()` (floats as shortest round-trip repr)."""
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        """Canonical JSON of the whole entry (how it travels in a Flower reply)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LedgerEntry:
        """Parse an entry sent by a node; LedgerError if it is not one."""
        try:
            data = json.loads(text)
            return cls(**{f.name: _typed(f.type, data[f.name] if f.name in data or f.name
                                         not in V2_FIELDS else "")
                          for f in dataclasses.fields(cls)})
        except (ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"not a ledger entry: {err}") from None


@dataclass(frozen=True)
class LedgerRow:
    """An entry as stored in one ledger file, with its position and row-chain links."""

    seq: int
    entry: LedgerEntry
    row_prev: str
    row_hash: str


def row_hash(row_prev: str, entry_hash: str) -> str:
    """The row chain's link: covers the previous row and this entry's hash."""
    return hashlib.sha256(f"{row_prev}:{entry_hash}".encode()).hexdigest()


def utc_now() -> str:
    """Timestamp of ledger entries: ISO 8601, UTC, to the hour (see "What leaves a node")."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()


def unconfirmed(entries: list[LedgerEntry]) -> list[LedgerEntry]:
    """Nodes' record-level write-ahead entries that no confirmation follows (crashed rounds).

    The server's client-level events are written in one step after the release, so they
    have no write-ahead phase and are never "unconfirmed".
    """
    confirmed = {e.prev_hash for e in entries if e.is_confirmation}
    return [e for e in entries
            if not e.is_confirmation and e.guarantee == RECORD_LEVEL
            and e.node_id != FEDERATION_NODE and e.hash not in confirmed]


def _typed(kind: Any, value: Any) -> Any:
    kind = str(kind)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected int, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected float, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {value!r}")
    return value
