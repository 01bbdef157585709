"""Ledgers written before format 2 still read, verify and audit, and migrate in place.

The format-1 file is written here with sqlite3 exactly as the old `PrivacyLedger` wrote it
(commit 0d45120, common/privacy/ledger.py): no `relation`/`noise` columns, entries hashed
without them, timestamps to the microsecond, claims from Opacus RDP under add/remove-one
(`legacy_rdp_epsilon`, bit for bit the old `epsilon_of`), accountant "rdp", and DP noise drawn
from the run seed. It deliberately does not use the new code to write, so a change in how the
new code hashes or reads old entries shows up here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from common.privacy.accounting import (
    ACCOUNTANT,
    REPLACE_ONE,
    epsilon_of,
    legacy_rdp_epsilon,
)
from common.privacy.audit_report import json_document, verdict_line
from common.privacy.ledger import (
    CONFIRMATION,
    FORMAT_VERSION,
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    PrivacyLedger,
    read_ledger,
)
from common.privacy.ledger_audit import audit
from common.privacy.ledger_integrity import verify_chain

NODE = "hospital-a"
DELTA = 1e-5
# A small node: n = 16 records, batch 8 -> q = 1/2. σ is what fedssl calibrated before format 2:
# Opacus get_noise_multiplier(target ε 8, δ 1e-5, q 1/2, 50 steps, accountant "rdp",
# epsilon_tolerance 0.005, alphas RDP_ORDERS) (hard-coded: the search costs seconds; the test
# below checks that it lands at ε ≈ 8).
SIGMA, RATE, STEPS = 2.423095703125, 0.5, 25  # two rounds of 25 steps = the 50 planned
OLD_FIELDS = (("run_id", "TEXT"), ("round", "INTEGER"), ("node_id", "TEXT"),
              ("guarantee", "TEXT"), ("mechanism", "TEXT"), ("noise_multiplier", "REAL"),
              ("sample_rate", "REAL"), ("steps", "INTEGER"), ("delta", "REAL"),
              ("accountant", "TEXT"), ("epsilon", "REAL"), ("max_epsilon", "REAL"),
              ("timestamp", "TEXT"), ("prev_hash", "TEXT"), ("hash", "TEXT"))
OLD_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, "
    + ", ".join(f'"{name}" {kind} NOT NULL' for name, kind in OLD_FIELDS)
    + ", row_prev TEXT NOT NULL, row_hash TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS entries_hash ON entries (hash);"
    "CREATE INDEX IF NOT EXISTS entries_node ON entries (node_id, seq);"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
)


def _old_hash(body: dict[str, Any]) -> str:
    """Format 1's entry hash: SHA-256 of the canonical JSON of every field except `hash`."""
    return hashlib.sha256(json.dumps(body, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def _old_insert(conn: sqlite3.Connection, body: dict[str, Any]) -> str:
    entry_hash = _old_hash(body)
    last = conn.execute("SELECT row_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    row_prev = last[0] if last else GENESIS
    row = hashlib.sha256(f"{row_prev}:{entry_hash}".encode()).hexdigest()
    names = [name for name, _ in OLD_FIELDS]
    conn.execute(
        "INSERT INTO entries (" + ", ".join(f'"{n}"' for n in names) + ", row_prev, row_hash) "
        "VALUES (" + ", ".join("?" * (len(names) + 2)) + ")",
        [*(body[n] for n in names[:-1]), entry_hash, row_prev, row])
    return entry_hash


def write_format1_ledger(path: Path, rounds: int = 2,
                         confirmed: bool = True) -> list[tuple[float, float, int]]:
    """A node's own format-1 ledger: each round a write-ahead entry and (unless `confirmed` is
    False, as before fedssl confirmed rounds) its confirmation."""
    history: list[tuple[float, float, int]] = []
    prev = GENESIS
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('format', '1')")
        conn.execute("INSERT INTO meta VALUES ('owner', ?)", (NODE,))
        for rnd in range(1, rounds + 1):
            history.append((SIGMA, RATE, STEPS))
            body = {"run_id": "3", "round": rnd, "node_id": NODE, "guarantee": RECORD_LEVEL,
                    "mechanism": POISSON_GAUSSIAN, "noise_multiplier": SIGMA,
                    "sample_rate": RATE, "steps": STEPS, "delta": DELTA, "accountant": "rdp",
                    "epsilon": legacy_rdp_epsilon(history, DELTA), "max_epsilon": 10.0,
                    "timestamp": f"2025-06-0{rnd}T12:34:56.789012+00:00", "prev_hash": prev}
            prev = _old_insert(conn, body)
            if not confirmed:
                continue
            confirmation = {**body, "mechanism": CONFIRMATION, "steps": 0,
                            "timestamp": f"2025-06-0{rnd}T12:41:07.000321+00:00",
                            "prev_hash": prev}
            prev = _old_insert(conn, confirmation)
    return history


@pytest.fixture()
def legacy(tmp_path: Path) -> tuple[Path, list[tuple[float, float, int]]]:
    path = tmp_path / "state" / "ledger.sqlite"
    path.parent.mkdir()
    return path, write_format1_ledger(path)


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(entries)")]


def _meta(path: Path, key: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])


def test_the_small_node_sigma_is_what_fedssl_calibrated_before():
    assert 7.96 <= legacy_rdp_epsilon([(SIGMA, RATE, 2 * STEPS)], DELTA) <= 8.0


def test_a_format1_file_reads_and_verifies_without_being_changed(legacy):
    path, history = legacy
    before = path.read_bytes()
    rows = read_ledger(path).rows()
    assert path.read_bytes() == before  # reading (and auditing) never migrates
    assert "relation" not in _columns(path) and _meta(path, "format") == "1"
    assert len(rows) == 4
    for row in rows:
        entry = row.entry
        assert entry.is_legacy and entry.reproducible_noise
        assert (entry.relation, entry.noise) == ("", "")
        assert "relation" not in entry.body() and "noise" not in entry.body()
        assert entry.computed_hash() == entry.hash  # the old hashes still verify
    assert verify_chain(rows) == []
    assert read_ledger(path).history(NODE, RECORD_LEVEL) == history
    audit(path)
    assert path.read_bytes() == before


def test_a_format1_ledger_fails_the_audit_with_no_dp_guarantee_and_a_replace_one_gap(legacy):
    path, history = legacy
    report = audit(path)
    assert not report.ok and not report.chain_problems and not report.guaranteed
    (node,) = report.nodes
    # The claims are exactly what the old accountant gave (no inconsistency)...
    assert all(e.claim_consistent for e in node.events)
    assert node.claimed_epsilon == legacy_rdp_epsilon(history, DELTA) <= 8.0
    # ...but q = 1/2 with the record count released makes replace-one the relation that holds,
    # and that costs far more than the add/remove ε = 8 the node claimed.
    assert node.relation == REPLACE_ONE
    assert node.epsilon_pld > 1.5 * node.claimed_epsilon
    assert not any(e.claim_covers for e in node.events)
    assert len(node.reproducible) == 2 and not node.guaranteed
    assert node.status == "under-claims for replace-one; no DP guarantee; over budget"
    text = "\n".join(report.reasons)
    assert "under-states ε for the relation that holds (replace-one)" in text
    assert "format 1: add/remove-one" in text
    assert "NO DP GUARANTEE" in text and "format-1 entries" in text
    # Budgets hold for the relation that holds: the old add/remove claims stayed under
    # max-epsilon 10, but the replace-one ε is past it, so the node went over its budget.
    assert node.epsilon_pld > 10.0
    assert any("went over budget at round 1" in r for r in node.reasons)
    assert verdict_line(report).startswith("FAIL: NO DP GUARANTEE (reproducible noise); ")
    doc = json_document(report, {})
    assert doc["dp_guarantee"] is False and doc["nodes"][0]["dp_guarantee"] is False
    assert [e["recomputed"]["claim_covers_pld"] for e in doc["nodes"][0]["events"]] == [
        False, False]


def test_format1_entries_without_confirmations_audit_as_legacy(tmp_path):
    # Such a node may predate confirmations: its entries are counted in full, labelled legacy.
    path = tmp_path / "ledger.sqlite"
    write_format1_ledger(path, confirmed=False)
    report = audit(path)
    (node,) = report.nodes
    assert node.legacy and node.crashed_rounds == () and len(node.unconfirmed) == 2
    assert any(f"no confirmations recorded for {NODE}" in n for n in report.notes)


def test_opening_a_format1_file_migrates_it_and_new_entries_keep_the_chain(legacy):
    path, history = legacy
    old_rows = read_ledger(path).rows()
    ledger = PrivacyLedger.open(path, owner=NODE)
    assert _meta(path, "format") == str(FORMAT_VERSION) == "2"
    assert {"relation", "noise"} <= set(_columns(path))
    assert ledger.rows() == old_rows  # same entries, same hashes, same row chain
    history.append((SIGMA, RATE, STEPS))
    new = ledger.append(
        run_id="4", round=1, node_id=NODE, guarantee=RECORD_LEVEL, mechanism=POISSON_GAUSSIAN,
        noise_multiplier=SIGMA, sample_rate=RATE, steps=STEPS, delta=DELTA,
        accountant=ACCOUNTANT, epsilon=epsilon_of(history, DELTA, REPLACE_ONE),
        max_epsilon=0.0, relation=REPLACE_ONE, noise=SECRET_NOISE)
    assert new.prev_hash == old_rows[-1].entry.hash and not new.is_legacy
    assert ledger.confirm(new) is not None
    rows = ledger.rows()
    assert len(rows) == 6 and verify_chain(rows) == []
    assert [r.entry.hash for r in rows[:4]] == [r.entry.hash for r in old_rows]
    report = audit(path)
    assert not report.chain_problems
    (node,) = report.nodes
    # The format-2 entry's replace-one claim over the whole history is consistent and covers
    # the PLD; the format-1 events still have no guarantee, so the node still fails.
    assert node.events[-1].claim_consistent and node.events[-1].claim_covers
    assert [r.entry.round for r in node.reproducible] == [1, 2]
    assert not report.ok and not report.guaranteed
