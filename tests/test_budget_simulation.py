"""Budgets and the ledger in Flower's real simulation engine, across two runs.

Run A gives every simulated node a budget (client-max-epsilon): each node must refuse exactly
the rounds whose projected ε crosses it. Run B reuses the nodes' state folder, so their
ledgers continue where run A stopped (a spent budget stays spent), and turns on client-level
DP, which the server must record as the federation's own ledger events.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from simulation_runs import TINY_RUN, fedssl_command, simulate

from client.dp_training import poisson_sample_rate
from common.data.demo_text import demo_splits
from common.privacy.accounting import ADD_REMOVE, REPLACE_ONE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GENESIS,
    POISSON_GAUSSIAN,
    PrivacyLedger,
    unconfirmed,
)
from common.run_config import RunConfig

# Slow tier (`make test-slow`): two simulations sharing node ledgers: ~2 min.
pytestmark = pytest.mark.slow

SETTINGS = {**TINY_RUN, "num-clients": 3, "noise-multiplier": 1.0, "dirichlet-alpha": 1000.0}
NODES = [f"partition-{i}" for i in range(3)]
DELTA = 1e-5


def _epsilon_after(rounds: int) -> dict[str, float]:
    """Each node's ε after `rounds` full rounds, from its partition size alone."""
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **SETTINGS})
    steps = config.local_steps
    sizes = [len(t) for t in demo_splits(config).client_texts]
    return {
        node: epsilon_of([(1.0, poisson_sample_rate(n, config.batch_size), steps)] * rounds,
                         DELTA, REPLACE_ONE)
        for node, n in zip(NODES, sizes, strict=True)
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    one, two, three = _epsilon_after(1), _epsilon_after(2), _epsilon_after(3)
    # Between the nodes' 2-round values: some refuse in round 2, the others in round 3.
    budget = (min(two.values()) + max(two.values())) / 2
    assert max(one.values()) < budget < min(three.values())
    state = root / "node-state"
    run_a, left_a = simulate(root / "a", {**SETTINGS, "num-rounds": 3,
                                          "client-max-epsilon": budget,
                                          "min-clients": 3,  # a refusal skips the round
                                          "sim-state-dir": state})
    run_b, left_b = simulate(root / "b", {**SETTINGS, "num-rounds": 1, "client-dp": "true",
                                          "client-noise-multiplier": 1.0,
                                          "client-sampling": "poisson",  # q = 1: all
                                          "update-clip-norm": 0.01, "sim-state-dir": state})
    return root, budget, (run_a, run_b), left_a | left_b


def _rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_both_runs_finish_and_leave_no_process(two_runs):
    _, _, results, leftovers = two_runs
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers


def test_refusal_happens_exactly_where_the_projection_crosses_the_budget(two_runs):
    root, budget, _, _ = two_runs
    projected = {r: _epsilon_after(r) for r in (1, 2, 3)}
    refusals = 0
    for line in _rounds(root / "a"):
        r = line["round"]
        should_refuse = {n for n in NODES if projected[r][n] > budget}
        assert {x["node"] for x in line["refused"]} == should_refuse, r
        assert {c["node"] for c in line["clients"]} == set(NODES) - should_refuse, r
        refusals += len(should_refuse)
    assert refusals > 0  # the budget really bit
    summary = json.loads((root / "a" / "summary.json").read_text())
    assert summary["privacy"]["budget_refusals"] == refusals
    for node in NODES:
        entries = PrivacyLedger.open(root / "node-state" / node / "ledger.sqlite",
                                     node).spends()
        run_a = [e for e in entries if e.run_id == entries[0].run_id]  # run B came later
        trained = sum(projected[r][node] <= budget for r in (1, 2, 3))
        assert [e.round for e in run_a] == list(range(1, trained + 1))
        spent = epsilon_of([(e.noise_multiplier, e.sample_rate, e.steps) for e in run_a], DELTA,
                           REPLACE_ONE)
        assert spent == pytest.approx(run_a[-1].epsilon) and spent <= budget


def test_rounds_with_too_few_updates_are_skipped_without_touching_the_model(two_runs):
    root, _, _, _ = two_runs
    lines = _rounds(root / "a")
    assert [bool(line["refused"]) for line in lines] == [False, True, True]
    assert [line["skipped"] for line in lines] == [False, True, True]  # min-clients = 3
    digests = [line["model_sha256"] for line in lines]
    assert digests[1] == digests[2] == digests[0]  # skipped rounds leave the model as it was
    assert all(line["dropouts"] == [] for line in lines)


def test_node_ledgers_accumulate_across_runs(two_runs):
    root, budget, _, _ = two_runs
    projected = {r: _epsilon_after(r) for r in (1, 2, 3)}
    run_b = _rounds(root / "b")[0]
    by_node = {c["node"]: c for c in run_b["clients"]}
    assert set(by_node) == set(NODES)  # no budget in run B: everyone trains
    for node in NODES:
        trained_in_a = sum(projected[r][node] <= budget for r in (1, 2, 3))
        ledger = PrivacyLedger.open(root / "node-state" / node / "ledger.sqlite", node)
        entries = ledger.entries()  # spends and their confirmations, one chain
        assert len(ledger.spends()) == trained_in_a + 1
        assert not unconfirmed(entries)  # every round that trained completed
        assert len({e.run_id for e in entries}) == 2
        assert entries[0].prev_hash == GENESIS
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
        # Run B's ε is the node's lifetime spend, not only run B's round.
        assert by_node[node]["epsilon"] == pytest.approx(
            projected[trained_in_a + 1][node], rel=1e-9)
        # The server's RUN_DIR ledger got run B's entries only: the node keeps run A's (another
        # federation's business), and the first one it sent commits to them by its prev_hash.
        server = PrivacyLedger.open(root / "b" / "ledger.sqlite", "run").entries(node)
        run_b_entries = [e for e in entries if e.run_id == entries[-1].run_id]
        assert [e.hash for e in server] == [e.hash for e in run_b_entries]
        assert server[0].prev_hash == entries[len(entries) - len(run_b_entries) - 1].hash


def test_audit_passes_on_both_runs_and_every_node_ledger(two_runs):
    root, _, _, _ = two_runs
    for path in [root / "a", root / "b", *sorted((root / "node-state").iterdir())]:
        result = fedssl_command("audit", str(path), "--json", timeout=300)
        assert result.returncode == 0, (path, result.stderr[-2000:])
        assert json.loads(result.stdout)["ok"] is True


def test_client_level_dp_is_accounted_in_the_run_ledger(two_runs):
    root, _, _, _ = two_runs
    server = PrivacyLedger.open(root / "b" / "ledger.sqlite", "run")
    (event,) = server.entries(FEDERATION_NODE)
    assert (event.guarantee, event.mechanism) == (CLIENT_LEVEL, POISSON_GAUSSIAN)
    assert (event.noise_multiplier, event.sample_rate, event.steps) == (1.0, 1.0, 1)
    assert event.epsilon == epsilon_of([(1.0, 1.0, 1)], DELTA, ADD_REMOVE)
    assert (event.relation, event.noise) == ("add-remove", "secret")
    summary = json.loads((root / "b" / "summary.json").read_text())
    assert summary["privacy"]["client_level"]["epsilon"] == event.epsilon
    assert summary["privacy"]["ledger"] == {"file": "ledger.sqlite", **server.head()}
    assert _rounds(root / "b")[0]["client_level_epsilon"] == event.epsilon
