"""`fedssl audit`: tamper evidence, independent ε recomputation, claims, budgets, the CLI.

Fast and Flower-free: ledgers are built with PrivacyLedger.append/add exactly as nodes and the
server write them (format 2: claimed ε from `epsilon_of` under the relation that holds for the
guarantee, PLD accountant, secret noise), then edited with sqlite3 to tamper.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from simulation_runs import (
    DELTA,
    FED_Q,
    FED_Z,
    RATE,
    SIGMA,
    STEPS,
    Tweak,
    append_spend,
    ledger_event,
)

from common.privacy.accounting import (
    ACCOUNTANT,
    ADD_REMOVE,
    REPLACE_ONE,
    epsilon_of,
)
from common.privacy.audit_report import json_document, verdict_line
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    LedgerEntry,
    PrivacyLedger,
    read_ledger,
)
from common.privacy.ledger_audit import AuditInputError, audit
from common.privacy.ledger_integrity import check_anchor, verify_chain
from simulations.cli import main

ROUNDS = 3
MIDDLE = 5  # seq of round 2, partition-1 (rows: p0, p1, federation per round)


def make_run(tmp_path: Path, budgets: tuple[float, ...] = (8.0, 0.0),
             tweak: Tweak | None = None) -> Path:
    """A finished RUN_DIR: two nodes' entries (relayed verbatim) + federation events + anchor."""
    run_dir = tmp_path / "run"
    run = PrivacyLedger.open(run_dir / "ledger.sqlite", owner="run")
    nodes = {f"partition-{i}": (PrivacyLedger.open(tmp_path / f"nodes/partition-{i}/ledger.sqlite",
                                                   owner=f"partition-{i}"), [], budget)
             for i, budget in enumerate(budgets)}
    federation: list[tuple[float, float, int]] = []
    for rnd in range(1, ROUNDS + 1):
        for node, (ledger, history, budget) in nodes.items():
            event = ledger_event(rnd, node, RECORD_LEVEL, SIGMA, RATE, STEPS, budget)
            run.add(append_spend(ledger, history, event, tweak))
        append_spend(run, federation,
                     ledger_event(rnd, FEDERATION_NODE, CLIENT_LEVEL, FED_Z, FED_Q, 1, 0.0), tweak)
    summary = {"privacy": {"ledger": {"file": "ledger.sqlite", **run.head()}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("template")
    make_run(base)
    return base


@pytest.fixture()
def run_dir(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of one finished run (building it costs more than copying it)."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run"


def _sql(path: Path, statement: str, *args: Any) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(statement, args)


def _tampered(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(name)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if len(value) == 64:  # a hash: flip one hex digit
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    return value + "x"


# ---------------------------------------------------------------------------------- integrity

def test_intact_run_passes(run_dir: Path):
    report = audit(run_dir)
    assert report.ok, report.reasons
    assert not verify_chain(read_ledger(run_dir / "ledger.sqlite").rows())
    assert {(n.node_id, n.guarantee) for n in report.nodes} == {
        ("partition-0", RECORD_LEVEL), ("partition-1", RECORD_LEVEL),
        (FEDERATION_NODE, CLIENT_LEVEL)}
    by_node = {n.node_id: n for n in report.nodes}
    assert by_node["partition-0"].status == "within budget"
    assert by_node["partition-1"].status == "no budget"
    assert by_node[FEDERATION_NODE].label == "client-level DP, for the federation"
    assert by_node["partition-0"].total_steps == ROUNDS * STEPS
    assert by_node["partition-0"].rounds == (1, 2, 3)
    assert by_node["partition-0"].relation == REPLACE_ONE
    assert by_node[FEDERATION_NODE].relation == ADD_REMOVE
    assert report.guaranteed and report.anchor_source == "summary.json"
    assert not report.run_problems
    for node in report.nodes:  # PLD is the tighter of the two, never looser
        assert 0 < node.epsilon_pld <= node.epsilon_rdp
        assert node.guaranteed and not node.withheld
        # The claim is exactly what its own accountant gives, and covers the finer PLD.
        assert node.claimed_epsilon == node.events[-1].recomputed_claim
        assert all(e.claim_consistent and e.claim_covers for e in node.events)
        assert node.epsilon_pld <= node.claimed_epsilon < node.epsilon_pld * 1.01


@pytest.mark.parametrize("column", [f.name for f in dataclasses.fields(LedgerEntry)]
                         + ["row_prev", "row_hash", "seq"])
def test_tampering_with_any_column_is_detected_and_names_the_entry(run_dir: Path, column):
    path = run_dir / "ledger.sqlite"
    rows = read_ledger(path).rows()
    # seq is covered by no hash: renumbering the last row keeps the order and must still show.
    target = rows[-1] if column == "seq" else rows[MIDDLE - 1]
    old = target.seq if column == "seq" else getattr(
        target.entry if column in target.entry.body() or column == "hash" else target, column)
    new = _tampered(old, column)
    _sql(path, f'UPDATE entries SET "{column}"=? WHERE seq=?', new, target.seq)

    rows = read_ledger(path).rows()
    problems = verify_chain(rows)
    assert problems, f"tampering with {column} went unnoticed"
    first = problems[0]
    now = next(r for r in rows if r.seq == (new if column == "seq" else target.seq))
    assert (first.seq, first.node_id, first.round) == (now.seq, now.entry.node_id,
                                                       now.entry.round)
    assert first.message.startswith(
        f"row {now.seq} (node '{now.entry.node_id}', round {now.entry.round}): ")
    expected = {"row_prev": "row-chain", "row_hash": "row-hash", "seq": "row-seq"}
    assert first.check == expected.get(column, "entry-hash")
    assert not audit(run_dir).ok


def test_deleted_middle_row_is_detected(run_dir: Path):
    path = run_dir / "ledger.sqlite"
    _sql(path, "DELETE FROM entries WHERE seq=?", MIDDLE)
    problems = verify_chain(read_ledger(path).rows())
    assert problems[0].seq == MIDDLE + 1
    assert "deleted" in problems[0].message
    # partition-1's own chain also misses its round-2 entry, at its round-3 entry (row 8):
    node = [p for p in problems if p.check == "node-chain"]
    assert [(p.seq, p.node_id) for p in node] == [(8, "partition-1")]
    assert "missing (deleted)" in node[0].message


def test_deleted_last_row_is_caught_only_by_the_anchor(run_dir: Path, tmp_path: Path):
    path = run_dir / "ledger.sqlite"
    _sql(path, "DELETE FROM entries WHERE seq=(SELECT MAX(seq) FROM entries)")
    assert verify_chain(read_ledger(path).rows()) == []  # both chains still look intact
    for target in (run_dir, path):  # RUN_DIR, or the file next to its summary.json
        report = audit(target)
        assert not report.ok
        assert "cut off" in report.reasons[0] and report.anchor_problems
    # The same cut on a node's own ledger (no anchor) is invisible; the report says so.
    node_ledger = tmp_path / "nodes/partition-0/ledger.sqlite"
    _sql(node_ledger, "DELETE FROM entries WHERE seq=(SELECT MAX(seq) FROM entries)")
    report = audit(node_ledger.parent)
    assert report.ok and report.owner == "partition-0"
    assert any("cut-off tail" in note for note in report.notes)


def test_anchor_mismatches():
    head = {"rows": 5, "head": "a" * 64}
    assert check_anchor(head, None) == []
    assert check_anchor(head, {"rows": 5, "head": "a" * 64}) == []
    assert "cut off" in check_anchor(head, {"rows": 7, "head": "b" * 64})[0].message
    assert "added" in check_anchor(head, {"rows": 4, "head": "b" * 64})[0].message
    assert "altered" in check_anchor(head, {"rows": 5, "head": "b" * 64})[0].message
    assert "malformed" in check_anchor(head, {"rows": "5"})[0].message


def test_swapped_rows_are_detected(run_dir: Path):
    path = run_dir / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        columns = [c[1] for c in conn.execute("PRAGMA table_info(entries)") if c[1] != "seq"]
        a, b = (conn.execute(f"SELECT {', '.join(columns)} FROM entries WHERE seq=?",
                             (seq,)).fetchone() for seq in (MIDDLE - 1, MIDDLE))
        update = f"UPDATE entries SET {', '.join(f'{c}=?' for c in columns)} WHERE seq=?"
        conn.execute(update, (*b, MIDDLE - 1))
        conn.execute(update, (*a, MIDDLE))
    problems = verify_chain(read_ledger(path).rows())
    assert problems[0].seq == MIDDLE - 1 and problems[0].check == "row-chain"
    assert "reordered" in problems[0].message


def test_insane_values_are_reported_even_with_a_valid_hash(tmp_path: Path):
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner="n1")
    ledger.append(run_id="r", round=1, node_id="n1", guarantee=RECORD_LEVEL,
                  mechanism=POISSON_GAUSSIAN, noise_multiplier=1.0, sample_rate=1.5, steps=3,
                  delta=2.0, accountant=ACCOUNTANT, epsilon=1.0, max_epsilon=0.0,
                  relation=ADD_REMOVE, noise="guessable")
    messages = [p.message for p in verify_chain(ledger.rows())]
    assert any("δ=2.0 is not in (0, 1)" in m for m in messages)
    assert any("q=1.5 is not in (0, 1]" in m for m in messages)
    # Record-level ε stated for add/remove: not the relation that holds (n is released).
    assert any("relation 'add-remove'; it must be 'replace-one'" in m for m in messages)
    assert any("unknown noise source 'guessable'" in m for m in messages)
    report = audit(tmp_path)
    assert not report.ok and not report.nodes  # nothing sane left to account


# -------------------------------------------------------------------------------- accounting

def test_under_and_over_claimed_epsilon_fail(tmp_path: Path):
    def shade(node: str, rnd: int, fields: dict[str, Any]) -> None:
        if node == "partition-1" and rnd == 2:
            fields["epsilon"] *= 0.9
        if node == FEDERATION_NODE and rnd == 3:
            fields["epsilon"] *= 1.01

    report = audit(make_run(tmp_path, tweak=shade))
    assert not report.ok and not report.chain_problems  # the chain is fine; the numbers are not
    by_node = {n.node_id: n for n in report.nodes}
    # 10% below its own accountant is also below the PLD ε of the relation that holds.
    assert by_node["partition-1"].status == "inconsistent claims; under-claims for replace-one"
    under, short = by_node["partition-1"].reasons
    assert "under-claims" in under and "at round 2" in under
    assert "under-states ε for the relation that holds (replace-one)" in short
    assert "at round 2" in short
    # 1% above is inconsistent with its own accountant but not an under-statement.
    assert by_node[FEDERATION_NODE].status == "inconsistent claims"
    assert "over-claims" in by_node[FEDERATION_NODE].reasons[0]
    assert [e.claim_consistent for e in by_node[FEDERATION_NODE].events] == [True, True, False]
    assert all(e.claim_covers for e in by_node[FEDERATION_NODE].events)
    assert by_node["partition-0"].ok


def test_reproducible_noise_means_no_dp_guarantee(tmp_path: Path):
    """Entries written with the simulation switch reproducible-noise (noise "seeded") are
    consistent claims with no guarantee behind them: the audit fails and says so first."""
    def seeded(node: str, rnd: int, fields: dict[str, Any]) -> None:
        if node == "partition-1":
            fields["noise"] = SEEDED_NOISE

    report = audit(make_run(tmp_path, tweak=seeded))
    assert not report.ok and not report.chain_problems and not report.guaranteed
    by_node = {n.node_id: n for n in report.nodes}
    node = by_node["partition-1"]
    assert not node.guaranteed and node.status == "no DP guarantee"
    assert [r.entry.round for r in node.reproducible] == [1, 2, 3]
    assert all(e.claim_consistent and e.claim_covers for e in node.events)  # only the noise
    (reason,) = node.reasons
    assert "NO DP GUARANTEE" in reason and "reproducible-noise was on" in reason
    assert "round 1 of run run-1" in reason
    assert by_node["partition-0"].ok and by_node["partition-0"].guaranteed
    assert verdict_line(report).startswith("FAIL: NO DP GUARANTEE (reproducible noise); ")
    doc = json_document(report, {})
    assert doc["dp_guarantee"] is False and doc["ok"] is False
    assert {n["node_id"]: n["dp_guarantee"] for n in doc["nodes"]} == {
        "partition-0": True, "partition-1": False, FEDERATION_NODE: True}


def test_over_budget_node_fails(tmp_path: Path):
    report = audit(make_run(tmp_path, budgets=(0.2, 0.0)))  # partition-0 ignored its budget
    by_node = {n.node_id: n for n in report.nodes}
    assert by_node["partition-0"].status == "over budget"
    assert by_node["partition-0"].epsilon_rdp > 0.2
    assert "over budget" in report.reasons[0] and "max-epsilon 0.2" in report.reasons[0]
    assert by_node["partition-1"].status == "no budget"


def test_budget_in_force_at_each_event_is_what_counts(tmp_path: Path):
    """A node that later drops its budget is not retroactively over it, but the change shows."""
    def drop_budget(node: str, rnd: int, fields: dict[str, Any]) -> None:
        if node == "partition-0" and rnd == ROUNDS:
            fields["max_epsilon"] = 0.0

    one_round = epsilon_of([(SIGMA, RATE, STEPS)], DELTA, REPLACE_ONE)
    report = audit(make_run(tmp_path, budgets=(one_round * 1.01, 0.0), tweak=drop_budget))
    node = {n.node_id: n for n in report.nodes}["partition-0"]
    # Round 2 crossed the budget recorded with it: that is a breach, whatever came later.
    assert not report.ok and "went over budget at round 2" in report.reasons[0]
    assert "budget changed" in node.status and node.budget is None


def test_cli_passes_and_writes_markdown_and_plot(run_dir: Path, capsys):
    assert main(["audit", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "partition-0" in out
    assert "record-level DP, per client" in out and "client-level DP, for the federation" in out
    markdown = (run_dir / "audit" / "audit.md").read_text()
    assert "# Privacy audit: PASS" in markdown and "Opacus RDP" in markdown
    assert "dp-accounting PLD" in markdown and "δ" in markdown
    assert (run_dir / "audit" / "epsilon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json_is_one_document_with_raw_events(run_dir: Path, tmp_path: Path, capsys):
    out_dir = tmp_path / "elsewhere"
    assert main(["audit", str(run_dir), "--json", "--delta", "1e-6", "--out", str(out_dir)]) == 0
    doc = json.loads(capsys.readouterr().out)  # the whole of stdout is the document
    assert doc["ok"] and doc["delta"] == 1e-6
    assert doc["dp_guarantee"] and doc["anchor_source"] == "summary.json"
    assert doc["run_problems"] == []
    node = next(n for n in doc["nodes"] if n["node_id"] == "partition-0")
    assert len(node["events"]) == ROUNDS
    assert node["relation"] == REPLACE_ONE and node["dp_guarantee"]
    assert node["withheld_earlier_spend"] is False
    assert node["epsilon_pld"] <= node["epsilon_rdp_bound"]
    event = node["events"][-1]
    assert {f.name for f in dataclasses.fields(LedgerEntry)} | {"seq", "row_hash"} <= set(event)
    assert event["relation"] == REPLACE_ONE and event["noise"] == SECRET_NOISE
    recomputed = event["recomputed"]
    assert recomputed["delta"] == 1e-6 and recomputed["relation"] == REPLACE_ONE
    assert recomputed["claim_consistent"] and recomputed["claim_covers_pld"]
    # A smaller δ costs more ε; the claim is still checked at the node's own δ.
    assert recomputed["epsilon_rdp_bound"] >= recomputed["epsilon_pld"] > event["epsilon"]
    assert recomputed["claim_at_entry_delta"] == pytest.approx(event["epsilon"], rel=1e-9)
    assert (out_dir / "audit.md").exists() and (out_dir / "epsilon.png").exists()


def test_cli_fails_with_reasons_on_stderr(run_dir: Path, capsys):
    _sql(run_dir / "ledger.sqlite", 'UPDATE entries SET "epsilon"=0.01 WHERE seq=?', MIDDLE)
    assert main(["audit", str(run_dir), "--json"]) == 1
    captured = capsys.readouterr()
    assert not json.loads(captured.out)["ok"]
    assert f"row {MIDDLE} (node 'partition-1', round 2)" in captured.err


def test_cli_bad_input_exits_2_with_one_line(run_dir: Path, tmp_path: Path, capsys):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a ledger")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes((run_dir / "ledger.sqlite").read_bytes()[:100] + b"\x00garbage" * 64)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    # A ledger with a dropped column (issue "Hardening" §5: it used to give 24 confusing
    # problems and exit 1), and a RUN_DIR whose summary.json is not JSON: one line, exit 2.
    dropped = tmp_path / "dropped" / "ledger.sqlite"
    dropped.parent.mkdir()
    shutil.copy(run_dir / "ledger.sqlite", dropped)
    with sqlite3.connect(dropped) as conn:
        conn.execute('ALTER TABLE entries DROP COLUMN "epsilon"')
    broken_summary = tmp_path / "broken-summary"
    shutil.copytree(run_dir, broken_summary)
    (broken_summary / "summary.json").write_text('{"privacy": ')
    cases = [[str(tmp_path / "missing")], [str(tmp_path / "nodes")], [str(text_file)],
             [str(corrupt)], [str(foreign)], [str(run_dir), "--delta", "abc"],
             [str(run_dir), "--delta", "2"], [str(dropped)], [str(broken_summary)]]
    for args in cases:
        assert main(["audit", *args]) == 2, args
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("fedssl audit: error: ") and captured.err.count("\n") == 1
    with pytest.raises(AuditInputError):
        audit(run_dir, delta=0.0)


def test_state_dir_copy_is_audited_like_a_run(run_dir: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "nodes" / "partition-1", copy)
    report = audit(copy)
    assert report.ok and [n.node_id for n in report.nodes] == ["partition-1"]


def test_noise_free_training_is_infinite_epsilon_in_strict_json(tmp_path: Path, capsys):
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner="n1")
    append_spend(ledger, [], ledger_event(1, "n1", RECORD_LEVEL, 0.0, RATE, STEPS, 0.0), None)
    assert main(["audit", str(tmp_path), "--json"]) == 0  # claimed ∞, and ∞ it is
    node = json.loads(capsys.readouterr().out)["nodes"][0]
    assert node["epsilon_rdp_bound"] == node["epsilon_pld"] == node["claimed_epsilon"] == "inf"

