"""The run ledger's relay of node entries: one durable transaction per round (add_many)."""

from __future__ import annotations

import json
from pathlib import Path

from test_ledger_audit import RATE, SIGMA, STEPS, _event, _spend

from common.privacy_ledger import RECORD_LEVEL, PrivacyLedger
from simulations.cli import main


def test_add_many_relays_new_entries_once_and_keeps_the_chains(tmp_path: Path):
    node = PrivacyLedger.open(tmp_path / "node.sqlite", owner="partition-0")
    history: list[tuple[float, float, int]] = []
    entries = [_spend(node, history, _event(r, "partition-0", RECORD_LEVEL, SIGMA, RATE, STEPS,
                                            8.0), None) for r in (1, 2, 3)]
    run = PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite", owner="run")
    assert run.add_many(entries[:2]) == 2
    assert run.add_many(entries) == 1  # known entries are skipped by hash
    assert [e.hash for e in run.entries("partition-0")] == [e.hash for e in entries]
    (tmp_path / "run" / "summary.json").write_text(json.dumps(
        {"privacy": {"ledger": {"file": "ledger.sqlite", **run.head()}}}))
    assert main(["audit", str(tmp_path / "run")]) == 0
