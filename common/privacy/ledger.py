"""The privacy ledger: an append-only, hash-chained record of every privacy-consuming event.

One SQLite file per ledger. A node keeps its own (in its state directory) and writes each
entry *before* it trains; the server keeps every entry it receives, plus its own client-level
DP events, in RUN_DIR/ledger.sqlite. Two chains make tampering evident:

* the **entry chain**, per node: each entry's `prev_hash` is the hash of that node's previous
  entry (its first points at GENESIS). A node's entry is hashed by the node, so the server's
  copy can be checked against what the node wrote.
* the **row chain**, per file: each row's `row_hash` covers the previous row's hash and this
  entry's hash, so a deleted, inserted or reordered row breaks it.

A chain cannot reveal a cut-off *tail* by itself; the server records the head (row count and
last row hash) in checkpoint.json after every round and in summary.json at the end, and the
audit checks it (a run's ledger without one fails).

**Write-ahead entries and confirmations.** A node appends its round's spend *before* it
trains (the write-ahead entry) and, once training finished and before its reply leaves, a
*confirmation*: an entry with mechanism CONFIRMATION, zero steps, the same run, round, σ, q,
δ and claimed ε, chained directly after the entry it confirms (its `prev_hash` is that entry's
hash). A confirmation is never spend: `history()` leaves it out, and so does the audit's ε
recomputation. A write-ahead entry without a confirmation is a round that crashed (or is still
running): it is counted in full, an over-count, never an under-count. Confirmations live in
the same chains as spend, so deleting, inserting or editing one is as evident as for spend.

**Format 2** adds two fields to every entry: `relation`, the neighbouring relation its ε is
stated for (record-level: replace-one, since a node releases its record count; client-level:
add/remove-one client), and `noise`, where the DP noise and sampling came from ("secret": a
per-message source nobody else can reproduce; "seeded": reproducible from the run seed, a
simulation switch with *no DP guarantee*). Format-1 entries (written before these existed)
have both empty: they claimed add/remove-one with Opacus RDP, and their noise was drawn from
the run seed. The hash covers the new fields only when they are set, so format-1 entries keep
their original hashes and old ledgers open unchanged (the file gains the two columns).

**What leaves a node.** Timestamps are kept to the hour (the exact time of a write-ahead entry
and its confirmation would tell how long training took, which depends on the Poisson batches
drawn), and a node's reply carries only its entries of the current run (`run_entries`): their
`prev_hash` links commit to the rest of its chain without revealing it.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psutil

from common.privacy.accounting import HistoryEntry

# The entry format lives in common/privacy/ledger_entry.py; its names are re-exported here, where the
# code that reads and writes ledgers has always found them.
from common.privacy.ledger_entry import (
    CLIENT_LEVEL,
    CONFIRMATION,
    FEDERATION_NODE,
    FORMAT_VERSION,
    GAUSSIAN_NO_AMPLIFICATION,
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    V2_FIELDS,
    LedgerEntry,
    LedgerError,
    LedgerRow,
    row_hash,
    unconfirmed,
    utc_now,
)

__all__ = [
    "CLIENT_LEVEL", "CONFIRMATION", "FEDERATION_NODE", "FORMAT_VERSION",
    "GAUSSIAN_NO_AMPLIFICATION", "GENESIS", "MAX_IN_FLIGHT_S", "POISSON_GAUSSIAN",
    "RECORD_LEVEL", "SECRET_NOISE", "SEEDED_NOISE", "LedgerEntry", "LedgerError", "LedgerRow",
    "PrivacyLedger", "read_ledger", "row_hash", "unconfirmed", "utc_now",
]

# A write-ahead entry whose process is alive blocks a second round of the same node for this
# long at most (a process that hangs for longer is treated as crashed: its entry still counts).
MAX_IN_FLIGHT_S = 24 * 3600.0


_FIELDS = [f.name for f in dataclasses.fields(LedgerEntry)]
_SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT"}
_TYPES = {f.name: {"int": int, "float": float, "str": str}[str(f.type)]
          for f in dataclasses.fields(LedgerEntry)}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, "
    + ", ".join(f'"{f.name}" {_SQL_TYPES[str(f.type)]} NOT NULL'
                for f in dataclasses.fields(LedgerEntry))
    + ", row_prev TEXT NOT NULL, row_hash TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS entries_hash ON entries (hash);"
    "CREATE INDEX IF NOT EXISTS entries_node ON entries (node_id, seq);"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    # Local only, never hashed or sent: which process holds an unconfirmed entry.
    "CREATE TABLE IF NOT EXISTS in_flight (hash TEXT PRIMARY KEY, pid INTEGER NOT NULL, "
    "process_started REAL NOT NULL, reserved REAL NOT NULL);"
)


class PrivacyLedger:
    """One ledger file. Appends are durable (fsynced) when `append`/`add` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path | str, owner: str) -> PrivacyLedger:
        """Open or create the ledger at `path`; `owner` (a node id or "run") is kept once.

        Re-opening with another owner is refused: a node's ledger must not silently change
        hands (its budget and history belong to it).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger = cls(path)
        with ledger._connect() as conn, conn:
            conn.executescript(_SCHEMA)
            _migrate(conn)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('owner', ?)", (owner,))
            stored = conn.execute("SELECT value FROM meta WHERE key='owner'").fetchone()[0]
        if stored != owner:
            raise LedgerError(f"{path} belongs to '{stored}', not '{owner}'")
        return ledger

    def meta(self, key: str, default: str) -> str:
        """A value kept once in the file (the first writer's `default` wins, forever)."""
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
            return str(conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @property
    def owner(self) -> str:
        """Who keeps this ledger: a node id, or "run" for a RUN_DIR ledger."""
        with self._connect() as conn:
            return str(conn.execute("SELECT value FROM meta WHERE key='owner'").fetchone()[0])

    def rows(self) -> list[LedgerRow]:
        """Every row in file order (seq). A format-1 file (read, never migrated, by an audit)
        has no format-2 columns: its entries read them as empty. LedgerError when any other
        column is missing (a damaged file, or not a fedssl ledger)."""
        with self._connect() as conn:
            present = _columns(conn)
            missing = [c for c in (*_FIELDS, "row_prev", "row_hash")
                       if c not in present and c not in V2_FIELDS]
            if missing:
                raise LedgerError(f"{self.path} lacks the column(s) {', '.join(missing)}: a "
                                  "damaged file, or not a fedssl ledger")
            cursor = conn.execute(
                "SELECT seq, " + ", ".join(f'"{f}"' if f in present else "''" for f in _FIELDS)
                + ", row_prev, row_hash FROM entries ORDER BY seq"
            )
            return [
                LedgerRow(seq=r[0], entry=LedgerEntry(*r[1:-2]), row_prev=r[-2], row_hash=r[-1])
                for r in cursor.fetchall()
            ]

    def run_entries(self, node_id: str, run_id: str) -> list[LedgerEntry]:
        """What a node sends the server: its entries of run `run_id`, and nothing else.

        Each entry's `prev_hash` commits to what the node wrote before it (other runs, other
        federations, also in between this run's entries) without revealing it.
        """
        return [e for e in self.entries(node_id) if e.run_id == run_id]

    def entries(self, node_id: str | None = None) -> list[LedgerEntry]:
        """Entries in order (confirmations included), optionally only one node's."""
        return [r.entry for r in self.rows() if node_id is None or r.entry.node_id == node_id]

    def spends(self, node_id: str | None = None) -> list[LedgerEntry]:
        """Privacy-consuming entries in order (no confirmations), optionally one node's."""
        return [e for e in self.entries(node_id) if not e.is_confirmation]

    def history(self, node_id: str, guarantee: str) -> list[HistoryEntry]:
        """A node's spend as an accountant history [(σ, q, steps), ...].

        Every write-ahead entry counts, confirmed or not (a crashed round over-counts);
        confirmations are not spend and never count.
        """
        return [(e.noise_multiplier, e.sample_rate, e.steps)
                for e in self.spends(node_id) if e.guarantee == guarantee]

    def head(self) -> dict[str, Any]:
        """Row count and last row hash: an anchor that reveals a cut-off tail."""
        rows = self.rows()
        return {"rows": len(rows), "head": rows[-1].row_hash if rows else GENESIS}

    def append(self, **event: Any) -> LedgerEntry:
        """Create, chain and durably store a new entry for `event["node_id"]`.

        `event` holds every LedgerEntry field except `prev_hash`, `hash` and `timestamp`.
        """
        with self._transaction() as conn:
            return self._append(conn, event)

    def _append(self, conn: sqlite3.Connection, event: dict[str, Any]) -> LedgerEntry:
        prev = conn.execute(
            "SELECT hash FROM entries WHERE node_id=? ORDER BY seq DESC LIMIT 1",
            (event["node_id"],),
        ).fetchone()
        # Exact field types before hashing: SQLite would hand back 0.0 for an int 0 in a
        # REAL column, and the stored entry would no longer match its hash.
        typed = {k: _TYPES[k](v) for k, v in event.items()}
        draft = LedgerEntry(**typed, timestamp=utc_now(), prev_hash=prev[0] if prev else GENESIS)
        entry = dataclasses.replace(draft, hash=draft.computed_hash())
        self._insert(conn, entry)
        return entry

    def _node_entries(self, conn: sqlite3.Connection, node_id: str) -> list[LedgerEntry]:
        present = _columns(conn)
        cursor = conn.execute(
            "SELECT " + ", ".join(f'"{f}"' if f in present else "''" for f in _FIELDS)
            + " FROM entries WHERE node_id=? ORDER BY seq", (node_id,))
        return [LedgerEntry(*r) for r in cursor.fetchall()]

    def _busy(self, conn: sqlite3.Connection, entries: list[LedgerEntry]) -> bool:
        """Another live process holds an unconfirmed entry of this node (a round in flight)."""
        open_hashes = {e.hash for e in unconfirmed(entries)}
        for hash_, pid, process_started, reserved in conn.execute(
                "SELECT hash, pid, process_started, reserved FROM in_flight"):
            if hash_ in open_hashes and pid != os.getpid() \
                    and abs(_process_started(pid) - process_started) < 1e-3 \
                    and time.time() - reserved < MAX_IN_FLIGHT_S:
                return True
        return False

    def reserve(
        self, node_id: str, decide: Callable[[list[LedgerEntry], bool], dict[str, Any] | str],
    ) -> LedgerEntry | str:
        """Check and append a write-ahead entry in one transaction; the entry, or why not.

        `decide(entries, busy)` sees the node's entries and whether another live process holds
        an unconfirmed entry of this node, and returns either the event to append (the fields
        `append` takes) or a refusal reason. Holding the write lock across both means two
        concurrent messages of one node cannot both pass a budget check that only one fits.
        The entry is marked in flight for this process until `confirm` or `abandon`.
        """
        with self._transaction() as conn:
            entries = self._node_entries(conn, node_id)
            decision = decide(entries, self._busy(conn, entries))
            if isinstance(decision, str):
                return decision
            if decision.get("node_id", node_id) != node_id:
                raise ValueError("decide() must append for the node it was asked about")
            entry = self._append(conn, {**decision, "node_id": node_id})
            # The process's start time beside its pid: a reused pid is not this process.
            conn.execute("INSERT OR REPLACE INTO in_flight VALUES (?, ?, ?, ?)",
                         (entry.hash, os.getpid(), _process_started(os.getpid()), time.time()))
        return entry

    def abandon(self, entry: LedgerEntry) -> None:
        """This process gave up on write-ahead `entry` (training failed): it stays unconfirmed,
        i.e. counted in full, but no longer blocks the node's next round."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM in_flight WHERE hash=?", (entry.hash,))

    def confirm(self, entry: LedgerEntry) -> LedgerEntry | None:
        """Record that write-ahead `entry` completed; returns the confirmation, or None.

        Only the node's latest entry can be confirmed (the confirmation chains right after
        it). If something else was appended since, nothing is written: the round then reads
        as crashed, an over-count, which is the safe side of being wrong.
        """
        with self._transaction() as conn:
            last = conn.execute(
                "SELECT hash FROM entries WHERE node_id=? ORDER BY seq DESC LIMIT 1",
                (entry.node_id,),
            ).fetchone()
            conn.execute("DELETE FROM in_flight WHERE hash=?", (entry.hash,))
            if entry.is_confirmation or last is None or last[0] != entry.hash:
                return None
            draft = dataclasses.replace(entry, mechanism=CONFIRMATION, steps=0,
                                        timestamp=utc_now(), prev_hash=entry.hash, hash="")
            confirmation = dataclasses.replace(draft, hash=draft.computed_hash())
            self._insert(conn, confirmation)
        return confirmation

    def add(self, entry: LedgerEntry) -> bool:
        """Store an entry written elsewhere (verbatim); False if this exact entry is present."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM entries WHERE hash=?", (entry.hash,)).fetchone():
                return False
            self._insert(conn, entry)
        return True

    def add_many(self, entries: Iterable[LedgerEntry]) -> int:
        """`add` for many entries in one durable transaction; returns how many were new.

        The server stores every node's whole ledger every round: one fsync per round instead
        of one per entry (at 100 nodes the per-entry commits dominated the round's overhead).
        """
        added = 0
        with self._transaction() as conn:
            for entry in entries:
                if conn.execute("SELECT 1 FROM entries WHERE hash=?", (entry.hash,)).fetchone():
                    continue
                self._insert(conn, entry)
                added += 1
        return added

    def _insert(self, conn: sqlite3.Connection, entry: LedgerEntry) -> None:
        last = conn.execute("SELECT row_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        prev_row = last[0] if last else GENESIS
        values = [getattr(entry, f) for f in _FIELDS]
        conn.execute(
            "INSERT INTO entries (" + ", ".join(f'"{f}"' for f in _FIELDS)
            + ", row_prev, row_hash) VALUES (" + ", ".join("?" * (len(_FIELDS) + 2)) + ")",
            [*values, prev_row, row_hash(prev_row, entry.hash)],
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # serialise writers; read-modify-write is atomic
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
                conn.execute("PRAGMA synchronous=FULL")  # an entry is on disk once committed
                yield conn
        except sqlite3.DatabaseError as err:
            raise LedgerError(f"cannot use privacy ledger {self.path}: {err}") from None


def read_ledger(path: Path | str) -> PrivacyLedger:
    """An existing ledger for reading (LedgerError when missing or not a ledger)."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}")
    ledger = PrivacyLedger(path)
    ledger.owner  # noqa: B018 - fails early on a file that is not a fedssl ledger
    return ledger


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(entries)")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Give a format-1 file the format-2 columns (existing entries keep them empty)."""
    present = _columns(conn)
    for name in V2_FIELDS:
        if name not in present:
            conn.execute(f'ALTER TABLE entries ADD COLUMN "{name}" TEXT NOT NULL DEFAULT \'\'')
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))


def _process_started(pid: int) -> float:
    """When process `pid` started (seconds since the epoch); -1 when there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return -1.0


