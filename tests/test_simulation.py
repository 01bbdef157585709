"""End to end in Flower's real simulation engine: 3 clients, 2 rounds, the whole pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file
from simulation_runs import (
    ROOT,
    TINY_RUN,
    fedssl_in_process,
    marked_env,
    marked_processes,
    simulate,
)

from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.ledger import PrivacyLedger


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str], set[int]]:
    run_dir = tmp_path_factory.mktemp("sim") / "run"
    result, leftovers = simulate(
        run_dir, {**TINY_RUN, "num-clients": 3, "num-rounds": 2, "target-epsilon": 4.0}
    )
    return run_dir, result, leftovers


def test_simulation_succeeds_and_stops_every_process(finished_run):
    _, result, leftovers = finished_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[fedssl] round 2/2 | clients 3/3" in result.stdout
    # The summary table names the run's privacy; the evaluation stage reported every arm.
    assert "| SSL pretrained (federated, DP ε=" in result.stdout
    assert "[fedssl] evaluation arm 1/6 finetuned: fine-tune on " in result.stdout
    assert "[fedssl] evaluation arm 6/6 pruned done in " in result.stdout
    assert not leftovers, f"processes left running: {leftovers}"


def test_run_dir_layout(finished_run):
    run_dir, _, _ = finished_run
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "global_model.safetensors",
                 "summary.json", "report.md", "models/finetuned.safetensors",
                 "models/baseline.safetensors", "models/pruned.safetensors",
                 "models/finetuned-hf/config.json", "simulation.log"):
        assert (run_dir / name).is_file(), name
    weights = load_file(run_dir / "global_model.safetensors")
    assert "mlm.bert.embeddings.word_embeddings.weight" in weights
    report = (run_dir / "report.md").read_text()
    epsilon = json.loads((run_dir / "summary.json").read_text())["privacy"]["max_epsilon"]
    assert f"| SSL pretrained (federated, DP ε={epsilon:.3g}) + fine-tune |" in report
    assert "max record-level ε" in report and "The test classes are " in report
    assert "replace-one" in report and "NO DP GUARANTEE" not in report


def test_summary_has_the_contracted_fields(finished_run):
    run_dir, _, _ = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for arm in ("finetuned", "baseline", "tfidf", "pruned"):
        assert 0.0 <= summary[arm]["accuracy"] <= 1.0
        assert 0.0 <= summary[arm]["macro_f1"] <= 1.0
    assert 0.45 <= summary["pruned"]["sparsity"] <= 0.55
    privacy = summary["privacy"]
    assert privacy["delta"] == 1e-5 and privacy["relation"] == "replace-one"
    assert privacy["dp_guarantee"] is True and privacy["accountant"] == "pld"
    assert len(privacy["per_client"]) == 3
    assert privacy["max_epsilon"] == max(privacy["per_client"].values())
    assert not privacy["max_epsilon_lower_bound"] and privacy["unknown_nodes"] == []
    assert summary["rounds"] == 2 and summary["clients"] == 3
    assert summary["labels_used"] > 0 and summary["wall_seconds"] > 0


def test_epsilon_accumulates_across_rounds_in_real_clients(finished_run):
    """Round 2's ε composes *both* rounds' steps: the history survived the round, in the
    nodes' ledgers, and the summary reports exactly what the nodes' own ledgers say."""
    run_dir, _, _ = finished_run
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    last = {c["partition-id"]: c for c in rounds[1]["clients"]}
    first = {c["partition-id"]: c for c in rounds[0]["clients"]}
    assert set(last) == set(first) == {0, 1, 2}
    summary = json.loads((run_dir / "summary.json").read_text())["privacy"]
    for pid, client in last.items():
        rate = client["sample-rate"]
        events = [(first[pid]["noise-multiplier"], rate, 4), (client["noise-multiplier"], rate, 4)]
        assert client["epsilon"] == epsilon_of(events, 1e-5, REPLACE_ONE)
        assert client["epsilon"] > first[pid]["epsilon"]
        # σ was calibrated, for all planned steps, to the target ε (the node's default cap).
        assert 4.0 * 0.97 <= client["epsilon"] <= 4.0
        assert client["update-norm"] >= 0 and client["received-norm"] <= 5.0 * (1 + 1e-4)
        assert "train-loss" not in client  # nodes keep their loss by default
        own = PrivacyLedger.open(run_dir / "nodes" / f"partition-{pid}" / "ledger.sqlite",
                                 f"partition-{pid}").spends()
        assert summary["per_client"][f"partition-{pid}"] == own[-1].epsilon == client["epsilon"]
        assert {e.noise for e in own} == {"secret"}


def test_audit_of_the_run_passes(finished_run):
    run_dir, _, _ = finished_run
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err
    assert "cross-checked 3 simulated node ledger(s)" in out and "PASS" in out


@pytest.mark.slow  # a second simulation, interrupted: ~40 s
def test_sigterm_mid_run_stops_every_process(tmp_path):
    """Interrupting `fedssl simulate` (SIGTERM, as Ctrl-C) leaves no Flower or Ray process."""
    env, token = marked_env()  # finds only this run's processes, never another run's
    process = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(tmp_path / "run"),
         "--set", "num-clients=2", "--set", "num-rounds=50", "--set", "max-records=2000",
         "--set", "hidden-size=32", "--set", "num-layers=1", "--set", "intermediate-size=64"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # wait until the federation is really running
            if "[fedssl] round 1/50" in line:
                break
        else:
            pytest.fail("the simulation never reached round 1")
        process.terminate()
        rest, _ = process.communicate(timeout=120)
        assert process.returncode == 130, rest
        assert "interrupted" in rest
    finally:
        if process.poll() is None:
            process.kill()
        leftovers = marked_processes(token) - {process.pid}
        for pid in leftovers:
            psutil.Process(pid).kill()
    assert not leftovers, f"processes left running: {leftovers}"
