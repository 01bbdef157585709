"""Short rounds in Flower's real simulation engine: one node's durable ledger is corrupt, so it
replies with an error status every time; with min-clients=2 every round is short, is re-run
with a fresh sample `round-retries` times (short-round=retry), then skipped with the model
unchanged, while the healthy node's spend in every attempt stays recorded and audits clean."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from simulation_runs import TINY_RUN, simulate

from client.dp_training import poisson_sample_rate
from common.data.demo_text import demo_splits
from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.ledger import PrivacyLedger, unconfirmed
from common.run_config import RunConfig
from common.tasks import get_task
from server.evaluation.safetensors_export import save_state
from simulations.cli import main as fedssl

# Slow tier (`make test-slow`): a simulation with retried short rounds: ~1 min.
pytestmark = pytest.mark.slow

RETRIES, ROUNDS = 2, 2
SETTINGS = {**TINY_RUN, "num-clients": 2, "num-rounds": ROUNDS, "min-clients": 2,
            "short-round": "retry", "round-retries": RETRIES, "noise-multiplier": 1.0}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    broken = run_dir / "nodes" / "partition-1" / "ledger.sqlite"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x00garbage, not SQLite" * 64)
    result, leftovers = simulate(run_dir, SETTINGS)
    return run_dir, result, leftovers


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_run_finishes_and_leaves_no_process(short_run):
    _, result, leftovers = short_run
    # Every round was skipped: the run ends, writes its summary, and exits 1 rather than
    # fine-tuning an untrained model as if it were a federated one.
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no federated round trained" in result.stderr
    assert f"({RETRIES + 1} attempts) SKIPPED: too few updates, model unchanged" in result.stdout
    assert not leftovers


def test_each_short_round_was_retried_then_skipped_with_the_model_unchanged(short_run, tmp_path):
    run_dir, _, _ = short_run
    lines = _lines(run_dir)
    assert [line["round"] for line in lines] == list(range(1, ROUNDS + 1))
    for line in lines:
        assert line["skipped"] is True
        assert [a["attempt"] for a in line["attempts"]] == list(range(1, RETRIES + 2))
        assert all(a["sampled"] == 2 and a["usable"] == 1 for a in line["attempts"])
        # The broken node is named, with the reason, once per attempt.
        assert [r["attempt"] for r in line["rejected"]] == list(range(1, RETRIES + 2))
        for rejected in line["rejected"]:
            assert rejected["node"] == "partition-1"
            assert "cannot use privacy ledger" in rejected["reason"]
    # Never corrupted: every skipped round's model is the initial model, byte for byte.
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **SETTINGS})
    torch.manual_seed(config.seed)
    initial = tmp_path / "initial.safetensors"
    save_state(get_task("mlm").build_model(config).state_dict(), initial)
    digest = hashlib.sha256(initial.read_bytes()).hexdigest()
    assert {line["model_sha256"] for line in lines} == {digest}
    log = (run_dir / "simulation.log").read_text()
    assert "node partition-1 failed: cannot use privacy ledger" in log


def test_every_attempt_spent_and_is_in_the_ledgers(short_run, capsys):
    run_dir, _, _ = short_run
    attempts = ROUNDS * (RETRIES + 1)
    node = PrivacyLedger.open(run_dir / "nodes" / "partition-0" / "ledger.sqlite",
                              "partition-0")
    spends = node.spends()
    assert [e.round for e in spends] == [r for r in range(1, ROUNDS + 1)
                                         for _ in range(RETRIES + 1)]
    assert not unconfirmed(node.entries())  # every attempt completed and was confirmed
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **SETTINGS})
    rate = poisson_sample_rate(len(demo_splits(config).client_texts[0]), config.batch_size)
    assert spends[-1].epsilon == pytest.approx(
        epsilon_of([(1.0, rate, config.local_steps)] * attempts, 1e-5, REPLACE_ONE), rel=1e-9)
    server = PrivacyLedger.open(run_dir / "ledger.sqlite", "run")
    assert [e.hash for e in server.entries("partition-0")] == [e.hash for e in node.entries()]
    # The summary reports the node's lifetime spend, every discarded attempt included.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["per_client"]["partition-0"] == pytest.approx(spends[-1].epsilon)
    # The run's audit cross-checks every simulated node's own ledger: partition-1's is the
    # planted garbage, so its completeness cannot be confirmed, and that is the one reason.
    assert fedssl(["audit", str(run_dir), "--json"]) == 1
    reasons = json.loads(capsys.readouterr().out)["reasons"]
    assert len(reasons) == 1 and "partition-1" in reasons[0] and "cannot be read" in reasons[0]
    assert fedssl(["audit", str(run_dir / "nodes" / "partition-0")]) == 0
