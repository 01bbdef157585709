"""Secure aggregation end to end in Flower's real simulation engine: 3 clients, 2 rounds,
`secure-aggregation=true` (Flower's SecAggPlusWorkflow on the server, secaggplus_mod on every
ClientApp): the run finishes, produces a federated model, and its audit passes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file
from simulation_runs import TINY_RUN, fedssl_in_process, simulate

# Real Flower simulations (~1 min each here): the slow tier (`make test-slow`), which keeps
# `make test` under its 8-minute budget. In `make test`, tests/test_secure_aggregation.py runs
# Flower's real SecAggPlusWorkflow and secaggplus_mod in one process.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str], set[int]]:
    run_dir = tmp_path_factory.mktemp("secagg") / "run"
    result, leftovers = simulate(
        run_dir, {**TINY_RUN, "num-clients": 3, "num-rounds": 2, "target-epsilon": 4.0,
                  "secure-aggregation": "true"})
    return run_dir, result, leftovers


def test_secure_simulation_finishes_with_a_federated_model(secure_run):
    run_dir, result, leftovers = secure_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers, f"processes left running: {leftovers}"
    assert "[fedssl] round 2/2 | secure aggregation | clients done 3/3" in result.stdout
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for line in rounds:
        assert line["clients_ok"] == 3 and not line["skipped"]
        secagg = line["attempts"][0]["secure_aggregation"]
        assert secagg["contributors"] == 3 and secagg["threshold"] == 2
        # the server never saw an update, nor a node's norm of it
        assert all("received-norm" not in c and "update-norm" not in c
                   and c["epsilon"] > 0 for c in line["clients"])
    weights = load_file(run_dir / "global_model.safetensors")
    assert "mlm.bert.embeddings.word_embeddings.weight" in weights
    secure = json.loads((run_dir / "summary.json").read_text())["privacy"]["secure_aggregation"]
    assert secure["client_noise"] is None  # no client-dp: the sum reaches the server as is
    assert [(r["contributors"], r["threshold"]) for r in secure["rounds"]] == [(3, 2), (3, 2)]
    assert secure["client_level_against_server"] is False
    assert secure["statement"] in (run_dir / "report.md").read_text()


def test_secure_simulation_audit_passes(secure_run):
    run_dir, _, _ = secure_run
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err
    assert "cross-checked 3 simulated node ledger(s)" in out and "PASS" in out


def test_distributed_client_level_noise_simulation(tmp_path):
    """client-dp with every node adding its noise share inside SecAgg+: the run finishes, the
    server's client-level ledger events are there, and the audit passes."""
    run_dir = tmp_path / "run"
    result, leftovers = simulate(
        run_dir, {**TINY_RUN, "num-clients": 3, "num-rounds": 2, "target-epsilon": 4.0,
                  "secure-aggregation": "true", "client-dp": "true",
                  "client-noise": "distributed", "downstream": "false"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers, f"processes left running: {leftovers}"
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in rounds:
        secagg = line["attempts"][0]["secure_aggregation"]
        assert secagg["client_noise"] == "distributed" and secagg["contributors"] == 3
        assert line["client_level_epsilon"] is not None and not line["skipped"]
    secure = json.loads((run_dir / "summary.json").read_text())["privacy"]["secure_aggregation"]
    assert secure["client_noise"] == "distributed" and secure["client_level_against_server"]
    assert secure["tolerated_colluders"] == 1  # k = 3 contributors, t = 2 in both rounds
    assert "holds against the server too" in (run_dir / "report.md").read_text()
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err
    assert "PASS" in out
