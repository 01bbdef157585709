"""Write-ahead entries and their confirmations: never spend, always tamper-evident, and the
audit names every crashed (unconfirmed) round while still counting it in full."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from common.privacy.accounting import ACCOUNTANT, REPLACE_ONE, epsilon_of
from common.privacy.ledger import (
    CONFIRMATION,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    LedgerEntry,
    PrivacyLedger,
    unconfirmed,
)
from common.privacy.ledger_audit import audit
from simulations.cli import main

DELTA = 1e-5
SIGMA, RATE, STEPS = 1.1, 0.02, 10
NODE = "hospital-a"


def _spend(ledger: PrivacyLedger, round_: int, history: list) -> LedgerEntry:
    history.append((SIGMA, RATE, STEPS))
    return ledger.append(
        run_id="7", round=round_, node_id=NODE, guarantee=RECORD_LEVEL,
        mechanism=POISSON_GAUSSIAN, noise_multiplier=SIGMA, sample_rate=RATE, steps=STEPS,
        delta=DELTA, accountant=ACCOUNTANT, epsilon=epsilon_of(history, DELTA, REPLACE_ONE),
        max_epsilon=0.0, relation=REPLACE_ONE, noise=SECRET_NOISE)


def _node_ledger(tmp_path: Path, crash_round: int | None = 2, rounds: int = 3) -> Path:
    """A node's ledger as a node writes it: every round confirmed except `crash_round`."""
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner=NODE)
    history: list = []
    for r in range(1, rounds + 1):
        entry = _spend(ledger, r, history)
        if r != crash_round:
            assert ledger.confirm(entry) is not None
    return tmp_path / "ledger.sqlite"


def test_a_confirmation_chains_after_its_entry_and_is_never_spend(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner=NODE)
    entry = _spend(ledger, 1, [])
    confirmation = ledger.confirm(entry)
    assert confirmation is not None and confirmation.is_confirmation
    assert confirmation.mechanism == CONFIRMATION and confirmation.steps == 0
    assert confirmation.prev_hash == entry.hash
    assert confirmation.computed_hash() == confirmation.hash
    assert (confirmation.round, confirmation.epsilon) == (entry.round, entry.epsilon)
    assert (confirmation.relation, confirmation.noise) == (REPLACE_ONE, SECRET_NOISE)
    assert ledger.history(NODE, RECORD_LEVEL) == [(SIGMA, RATE, STEPS)]  # not spend
    assert ledger.spends() == [entry] and len(ledger.entries()) == 2
    assert ledger.confirm(entry) is None  # no longer the node's latest entry
    assert ledger.confirm(confirmation) is None
    assert len(ledger.entries()) == 2


def test_a_crashed_round_is_counted_in_full_and_reported(tmp_path, capsys):
    path = _node_ledger(tmp_path, crash_round=2)
    ledger = PrivacyLedger.open(path, owner=NODE)
    assert [e.round for e in unconfirmed(ledger.entries())] == [2]
    report = audit(path)
    assert report.ok, report.reasons
    (node,) = report.nodes
    assert [r.entry.round for r in node.crashed_rounds] == [2] and node.confirmations == 2
    # The crashed round's spend is in the recomputation: 3 rounds of steps, not 2.
    three = epsilon_of([(SIGMA, RATE, STEPS)] * 3, DELTA, REPLACE_ONE)
    assert node.events[-1].recomputed_claim == three
    assert node.epsilon_pld == pytest.approx(three, rel=1e-3)
    assert node.epsilon_pld > epsilon_of([(SIGMA, RATE, STEPS)] * 2, DELTA, REPLACE_ONE)
    assert len(node.events) == 3  # confirmations are not events
    (note,) = [n for n in report.notes if "crashed" in n]
    assert "round 2 of run 7" in note and "over-count, never an under-count" in note
    assert main(["audit", str(path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "round 2 (over-counted)" in text and "PASS" in text
    assert main(["audit", str(path), "--json", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads(capsys.readouterr().out)
    (node_doc,) = doc["nodes"]
    assert [c["round"] for c in node_doc["crashed_rounds"]] == [2]
    assert [e["confirmed"] for e in node_doc["events"]] == [True, False, True]


def test_format_2_entries_without_confirmations_are_crashed_rounds_not_legacy(tmp_path):
    # Format 2 came after confirmations: a node whose every round crashed is not "legacy".
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner=NODE)
    history: list = []
    for r in (1, 2):
        _spend(ledger, r, history)
    report = audit(tmp_path)
    assert report.ok, report.reasons
    (node,) = report.nodes
    assert not node.legacy and [r.entry.round for r in node.crashed_rounds] == [1, 2]
    assert not any("no confirmations recorded" in n for n in report.notes)
    assert any("2 crashed round(s)" in n for n in report.notes)


def _rewrite(path: Path, seq: int, **changes: object) -> None:
    """Replace row `seq`'s entry, recomputing its entry hash (a careful forger)."""
    ledger = PrivacyLedger(path)
    row = next(r for r in ledger.rows() if r.seq == seq)
    draft = dataclasses.replace(row.entry, **changes, hash="")
    forged = dataclasses.replace(draft, hash=draft.computed_hash())
    with sqlite3.connect(path) as conn:
        sets = ", ".join(f'"{k}"=?' for k in forged.body()) + ', "hash"=?'
        conn.execute(f"UPDATE entries SET {sets} WHERE seq=?",
                     [*forged.body().values(), forged.hash, seq])


def test_deleting_a_confirmation_breaks_the_chains(tmp_path):
    path = _node_ledger(tmp_path, crash_round=None)  # rows: w1 c1 w2 c2 w3 c3
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM entries WHERE seq=4")
    report = audit(path)
    assert not report.ok
    assert {p.check for p in report.chain_problems} >= {"row-seq", "node-chain"}


@pytest.mark.parametrize(("changes", "check"), [
    ({"epsilon": 0.001}, "confirmation"),  # claims another ε than the entry it confirms
    ({"round": 9}, "confirmation"),
    ({"noise": "seeded"}, "confirmation"),  # format-2 fields must match too
    ({"steps": 5}, "value"),  # a confirmation never spends
])
def test_a_forged_confirmation_is_caught(tmp_path, changes, check):
    path = _node_ledger(tmp_path, crash_round=None)
    _rewrite(path, 2, **changes)
    report = audit(path)
    assert not report.ok
    assert check in {p.check for p in report.chain_problems}
    assert any(p.seq == 2 for p in report.chain_problems)


def test_editing_a_confirmation_without_rehashing_is_caught(tmp_path):
    path = _node_ledger(tmp_path, crash_round=None)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET epsilon=0.0 WHERE seq=2")
    report = audit(path)
    assert "entry-hash" in {p.check for p in report.chain_problems}


def test_confirmations_travel_verbatim_into_the_run_ledger(tmp_path):
    node = PrivacyLedger.open(_node_ledger(tmp_path / "n", crash_round=2), owner=NODE)
    run = PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite", owner="run")
    for entry in node.entries():  # as the server stores a reply's ledger
        run.add(LedgerEntry.from_json(entry.to_json()))
    assert [e.hash for e in run.entries()] == [e.hash for e in node.entries()]
    # The server's anchor (a run ledger without one fails the audit).
    (tmp_path / "run" / "summary.json").write_text(json.dumps(
        {"privacy": {"ledger": {"file": "ledger.sqlite", **run.head()}}}))
    report = audit(tmp_path / "run")
    assert report.ok, report.reasons
    (audited,) = report.nodes
    assert [r.entry.round for r in audited.crashed_rounds] == [2]
