"""`fedssl audit RUN_DIR` beyond the ledger file: its anchor (summary.json or checkpoint.json),
the cross-checks against config.json, metrics.jsonl and the simulated nodes' own ledgers, and
run ledgers whose nodes withheld their earlier chain.

Fast and Flower-free: a RUN_DIR is built the way the server and the simulated nodes write one
(nodes append and confirm in their own ledgers and send `run_entries`; the server relays them
with `add_many`, appends the federation's events, writes metrics lines and the anchor).
"""

from __future__ import annotations

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
    append_spend,
    ledger_event,
)

from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    PrivacyLedger,
    read_ledger,
)
from common.privacy.ledger_audit import audit
from common.privacy.ledger_integrity import verify_chain, withheld_chains
from common.run_config import RunConfig

RUN_ID = "run-1"
NODES = ("partition-0", "partition-1")
ROUNDS = 2
History = list[tuple[float, float, int]]


def _config(**changes: Any) -> dict[str, Any]:
    """config.json as the server writes it (RunConfig.to_mapping) for this run's settings."""
    config = RunConfig(local_steps=STEPS, noise_multiplier=str(SIGMA), delta=DELTA,
                       client_dp=True, client_noise_multiplier=FED_Z, client_sampling="poisson")
    return {**config.to_mapping(), **changes}


def _node_round(node: PrivacyLedger, node_id: str, history: History, rnd: int, run_id: str,
                epsilon: float | None = None) -> None:
    """One round on a node: write-ahead entry (claim from its whole history), confirmation."""
    def claim(_node: str, _rnd: int, fields: dict[str, Any]) -> None:
        if epsilon is not None:
            fields["epsilon"] = epsilon

    event = ledger_event(rnd, node_id, RECORD_LEVEL, SIGMA, RATE, STEPS, 0.0, run_id=run_id)
    entry = append_spend(node, history, event, claim)
    assert node.confirm(entry) is not None


def _write_anchor(run_dir: Path, run: PrivacyLedger, run_ids: list[str]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(
        {"run_ids": run_ids, "privacy": {"ledger": {"file": "ledger.sqlite", **run.head()}}}))


def build_run_dir(run_dir: Path) -> Path:
    """A finished simulation RUN_DIR: two nodes (own ledgers under RUN_DIR/nodes), the
    federation's client-level events, metrics.jsonl with run ids, config.json, summary.json."""
    run = PrivacyLedger.open(run_dir / "ledger.sqlite", owner="run")
    nodes = {n: (PrivacyLedger.open(run_dir / "nodes" / n / "ledger.sqlite", owner=n), [])
             for n in NODES}
    federation: History = []
    metrics = []
    for rnd in range(1, ROUNDS + 1):
        for node_id, (node, history) in nodes.items():
            _node_round(node, node_id, history, rnd, RUN_ID)
            run.add_many(node.run_entries(node_id, RUN_ID))  # what the reply carries
        append_spend(run, federation, ledger_event(rnd, FEDERATION_NODE, CLIENT_LEVEL, FED_Z, FED_Q,
                                                   1, 0.0, run_id=RUN_ID), None)
        metrics.append({"round": rnd, "run_id": RUN_ID,
                        "clients": [{"node": n, "num-examples": 5000} for n in NODES]})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run_dir / "config.json").write_text(json.dumps(_config()))
    _write_anchor(run_dir, run, [RUN_ID])
    return run_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run_dir(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture()
def run_dir(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the finished RUN_DIR."""
    return Path(shutil.copytree(template, tmp_path / "run"))


def test_a_complete_run_dir_passes_every_cross_check(run_dir: Path):
    report = audit(run_dir)
    assert report.ok, report.reasons
    assert report.anchor_source == "summary.json" and report.anchor is not None
    assert not report.run_problems and report.guaranteed
    assert any("cross-checked 2 simulated node ledger(s)" in n for n in report.notes)
    assert {n.node_id for n in report.nodes} == {*NODES, FEDERATION_NODE}


# ------------------------------------------------------------------------------------- anchor

def test_a_run_ledger_without_an_anchor_fails(run_dir: Path):
    (run_dir / "summary.json").unlink()
    report = audit(run_dir)
    assert not report.ok and report.anchor is None and report.anchor_source == ""
    (problem,) = report.anchor_problems
    assert problem.check == "anchor" and "no ledger anchor" in problem.message
    assert report.reasons == [problem.message]  # the ledger itself is fine
    # A summary.json without the privacy anchor (and no checkpoint.json) is no anchor either.
    (run_dir / "summary.json").write_text(json.dumps({"run_ids": [RUN_ID]}))
    assert "no ledger anchor" in audit(run_dir).reasons[0]


def test_checkpoint_anchor_is_used_without_summary_and_reveals_a_cut_tail(run_dir: Path):
    path = run_dir / "ledger.sqlite"
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoint.json").write_text(json.dumps(
        {"round": ROUNDS, "ledger": read_ledger(path).head()}))  # as a crashed run leaves it
    report = audit(run_dir)
    assert report.ok, report.reasons
    assert report.anchor_source == "checkpoint.json"
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM entries WHERE seq=(SELECT MAX(seq) FROM entries)")
    assert verify_chain(read_ledger(path).rows(), withheld_starts=True) == []
    report = audit(run_dir)
    assert not report.ok and report.anchor_source == "checkpoint.json"
    (problem,) = report.anchor_problems
    assert "cut off" in problem.message and "the last 1 row(s)" in problem.message


# ---------------------------------------------------------------------------- cross-checks

def test_a_node_ledger_entry_the_run_ledger_lacks_fails_naming_the_node(run_dir: Path):
    node_path = run_dir / "nodes" / "partition-0" / "ledger.sqlite"
    node = PrivacyLedger.open(node_path, owner="partition-0")
    history = node.history("partition-0", RECORD_LEVEL)
    _node_round(node, "partition-0", history, ROUNDS + 1, RUN_ID)  # its reply never arrived
    report = audit(run_dir)
    assert not report.ok and not report.chain_problems and not report.anchor_problems
    (problem,) = report.run_problems
    assert problem.check == "node-ledger" and problem.node_id == "partition-0"
    assert problem.round == ROUNDS + 1
    assert problem.message.startswith(
        f"node 'partition-0''s own ledger holds 1 spend entry of this run (round(s) "
        f"{ROUNDS + 1}) that the run's ledger lacks")


def test_a_confirmation_the_run_ledger_lacks_is_only_a_note(run_dir: Path):
    """The node confirmed its last round after the server's last copy: the copy counts that
    round as crashed (in full), an over-count, never an under-count."""
    path = run_dir / "ledger.sqlite"
    with sqlite3.connect(path) as conn:  # the copy as it was before partition-1's confirmation
        seq = conn.execute("SELECT MAX(seq) FROM entries WHERE node_id='partition-1'").fetchone()
        conn.execute("DELETE FROM entries WHERE seq>=?", seq)
    run = PrivacyLedger.open(path, owner="run")
    append_spend(run, [(FED_Z, FED_Q, 1)] * (ROUNDS - 1),
                 ledger_event(ROUNDS, FEDERATION_NODE, CLIENT_LEVEL, FED_Z, FED_Q, 1, 0.0,
                              run_id=RUN_ID), None)
    _write_anchor(run_dir, run, [RUN_ID])
    report = audit(run_dir)
    assert report.ok, report.reasons
    assert any("node 'partition-1' confirmed 1 round(s) after the server's last copy" in n
               and f"round(s) {ROUNDS}" in n for n in report.notes)
    audited = {n.node_id: n for n in report.nodes}["partition-1"]
    assert [r.entry.round for r in audited.crashed_rounds] == [ROUNDS]


def test_a_tampered_node_ledger_fails(run_dir: Path):
    with sqlite3.connect(run_dir / "nodes" / "partition-1" / "ledger.sqlite") as conn:
        conn.execute("UPDATE entries SET steps=1 WHERE seq=1")
    report = audit(run_dir)
    assert not report.ok
    assert [(p.check, p.node_id, p.seq) for p in report.run_problems] == [
        ("node-ledger", "partition-1", 1)]
    assert "node 'partition-1''s own ledger" in report.run_problems[0].message


@pytest.mark.parametrize(("key", "value", "fragment", "count"), [
    ("local-steps", STEPS + 1,
     f"{STEPS} DP-SGD steps, but config.json says local-steps={STEPS + 1}", ROUNDS * len(NODES)),
    ("noise-multiplier", "2.0", f"σ={SIGMA}, but config.json fixes noise-multiplier=2.0",
     ROUNDS * len(NODES)),
    ("client-noise-multiplier", 2.0,
     f"client-level event of 1 round(s) at z={FED_Z}; config.json says 1 round at z=2.0", ROUNDS),
])
def test_a_ledger_that_disagrees_with_config_json_fails(run_dir: Path, key, value, fragment,
                                                        count):
    (run_dir / "config.json").write_text(json.dumps(_config(**{key: value})))
    report = audit(run_dir)
    assert not report.ok
    assert [p.check for p in report.run_problems] == ["config"] * count
    assert fragment in report.run_problems[0].message
    assert report.run_problems[0].message.startswith("row ")


def test_an_accepted_update_without_a_spend_fails(run_dir: Path):
    metrics = run_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    lines[0]["clients"].append({"node": "partition-2", "num-examples": 40})
    metrics.write_text("".join(json.dumps(m) + "\n" for m in lines))
    report = audit(run_dir)
    assert not report.ok
    (problem,) = report.run_problems
    assert (problem.check, problem.node_id, problem.round) == ("metrics", "partition-2", 1)
    assert ("the server used an update of node 'partition-2' but the ledger holds no spend of "
            "it for that round") in problem.message


def test_run_ids_of_other_runs_do_not_satisfy_this_runs_metrics(run_dir: Path):
    """A spend counts for the (run, round) it was written in: a resumed run's round 1 needs
    its own entry, not the first run's."""
    metrics = run_dir / "metrics.jsonl"
    resumed = {"round": 1, "run_id": "run-2", "clients": [{"node": "partition-0"}]}
    metrics.write_text(metrics.read_text() + json.dumps(resumed) + "\n")
    report = audit(run_dir)
    assert [(p.check, p.node_id) for p in report.run_problems] == [("metrics", "partition-0")]


# --------------------------------------------------------------------------- withheld chains

def _withheld_run(run_dir: Path, last_claim: float | None = None) -> tuple[PrivacyLedger, str]:
    """partition-0 took part in run-0 (another federation's RUN_DIR), then in run-1, whose
    RUN_DIR holds only its run-1 entries; its own ledger (under RUN_DIR/nodes) holds both.
    Returns its own ledger and the hash its run-1 chain continues from."""
    node_id = "partition-0"
    node = PrivacyLedger.open(run_dir / "nodes" / node_id / "ledger.sqlite", owner=node_id)
    history: History = []
    for rnd in range(1, ROUNDS + 1):
        _node_round(node, node_id, history, rnd, "run-0")
    earlier = node.entries(node_id)[-1].hash
    run = PrivacyLedger.open(run_dir / "ledger.sqlite", owner="run")
    for rnd in range(1, ROUNDS + 1):
        last = rnd == ROUNDS and last_claim is not None
        _node_round(node, node_id, history, rnd, RUN_ID, last_claim if last else None)
        run.add_many(node.run_entries(node_id, RUN_ID))
    lines = [{"round": r, "run_id": RUN_ID, "clients": [{"node": node_id}]}
             for r in range(1, ROUNDS + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (run_dir / "config.json").write_text(json.dumps(_config()))
    _write_anchor(run_dir, run, [RUN_ID])
    return node, earlier


def test_a_run_ledger_may_continue_a_chain_the_node_withheld(tmp_path: Path):
    run_dir = tmp_path / "run"
    node, earlier = _withheld_run(run_dir)
    rows = read_ledger(run_dir / "ledger.sqlite").rows()
    assert {r.entry.run_id for r in rows} == {RUN_ID}  # run-0 never left the node
    assert rows[0].entry.prev_hash == earlier != GENESIS
    assert verify_chain(rows, withheld_starts=True) == []
    # A node's own ledger must start at GENESIS: the same rows there would be a broken chain.
    assert [p.check for p in verify_chain(rows)] == ["node-chain"]
    assert withheld_chains(rows) == {"partition-0": 1}  # one link leads to a kept entry
    report = audit(run_dir)
    assert report.ok, report.reasons
    (audited,) = report.nodes
    assert audited.withheld and "earlier spend withheld by the node" in audited.status
    assert any("partition-0' sent only this run's entries: 1 of them link to entries it kept"
               in n for n in report.notes)
    # Its claims include run-0's spend, so they exceed what the run ledger shows.
    shown = epsilon_of([(SIGMA, RATE, STEPS)] * ROUNDS, DELTA, REPLACE_ONE)
    assert audited.events[-1].recomputed_claim == shown < audited.claimed_epsilon
    assert audited.claimed_epsilon == node.spends("partition-0")[-1].epsilon


def test_a_withheld_chain_cannot_hide_a_claim_below_this_runs_own_spend(tmp_path: Path):
    shown = epsilon_of([(SIGMA, RATE, STEPS)] * ROUNDS, DELTA, REPLACE_ONE)
    run_dir = tmp_path / "run"
    _withheld_run(run_dir, last_claim=shown * 0.9)
    report = audit(run_dir)
    assert not report.ok and not report.chain_problems
    (audited,) = report.nodes
    assert audited.withheld
    assert [e.claim_consistent for e in audited.events] == [True, False]
    assert f"under-claims: it claimed ε={shown * 0.9:.6g} at round {ROUNDS}" in audited.reasons[0]
    # In simulation the withheld part is on disk: the node's own ledger is audited in full,
    # and the same under-claim is named there too.
    assert [p.check for p in report.run_problems] == ["node-ledger"] * len(report.run_problems)
    assert any("own ledger" in p.message and "under-claims" in p.message
               for p in report.run_problems)


def test_another_runs_entries_in_between_stay_on_the_node(tmp_path: Path):
    """A node in two federations at once: the entries of the other run, written between this
    run's, are not sent; this run's entries link across them, and the run ledger verifies."""
    node = PrivacyLedger.open(tmp_path / "node.sqlite", "partition-0")
    history: list[tuple[float, float, int]] = []
    for run_id, rnd in ((RUN_ID, 1), ("other-federation", 1), (RUN_ID, 2)):
        history.append((SIGMA, RATE, STEPS))
        node.append(run_id=run_id, round=rnd, node_id="partition-0", guarantee=RECORD_LEVEL,
                    mechanism=POISSON_GAUSSIAN, noise_multiplier=SIGMA, sample_rate=RATE,
                    steps=STEPS, delta=DELTA, accountant="pld", max_epsilon=0.0,
                    epsilon=epsilon_of(history, DELTA, REPLACE_ONE), relation=REPLACE_ONE,
                    noise="secret")
    sent = node.run_entries("partition-0", RUN_ID)
    assert [e.run_id for e in sent] == [RUN_ID, RUN_ID]  # the other federation's stays home
    run = PrivacyLedger.open(tmp_path / "run.sqlite", "run")
    run.add_many(sent)
    rows = run.rows()
    assert verify_chain(rows, withheld_starts=True) == []
    assert withheld_chains(rows) == {"partition-0": 1}
