"""The image task (`mae`) end to end in Flower's real simulation engine: 3 clients, 2 rounds."""

from __future__ import annotations

import json

import pytest
from simulation_runs import fedssl_command, simulate

# Slow tier (`make test-slow`): the whole image pipeline in simulation: ~1.5 min.
pytestmark = pytest.mark.slow

SETTINGS = {"task": "mae", "num-clients": 3, "num-rounds": 2, "local-steps": 4,
            "batch-size": 32, "label-fraction": 0.05, "finetune-epochs": 3,
            "prune-recover-epochs": 1, "target-epsilon": 4.0,
            "aggregator": "median"}  # Flower's FedMedian over the clients' updates
ARMS = ["finetuned", "baseline", "pixels", "probe", "probe_random", "pruned"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mae") / "run"
    result, leftovers = simulate(run_dir, SETTINGS)
    return run_dir, result, leftovers


def test_image_simulation_finishes_and_stops_every_process(image_run):
    _, result, leftovers = image_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[fedssl] round 2/2 | clients 3/3" in result.stdout
    assert not leftovers


def test_image_summary_has_every_arm_and_the_same_shape_as_text(image_run):
    run_dir, _, _ = image_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [key for key, _ in summary["arms"]] == ARMS
    for arm in ARMS:
        assert 0.0 <= summary[arm]["accuracy"] <= 1.0
        assert 0.0 <= summary[arm]["macro_f1"] <= 1.0
    # Logistic regression on 200 MNIST pixels vectors is far above chance (10 classes):
    assert summary["pixels"]["accuracy"] > 0.5
    assert summary["task"] == "mae" and summary["labels"]["classes_in_test_set"] == 10
    assert 0.45 <= summary["pruned"]["sparsity"] <= 0.55
    privacy = summary["privacy"]
    assert len(privacy["per_client"]) == 3
    assert 4.0 * 0.97 <= privacy["max_epsilon"] <= 4.0 + 1e-9  # σ calibrated to target ε
    report = (run_dir / "report.md").read_text()
    assert "random-init encoder, linear probe (control)" in report
    assert not (run_dir / "tokenizer.json").exists()  # the image task has no vocabulary


def test_the_median_aggregate_moved_the_model_every_round(image_run):
    run_dir, _, _ = image_run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["skipped"] for line in lines] == [False, False]
    assert len({line["model_sha256"] for line in lines}) == 2


def test_image_run_audits_clean(image_run):
    run_dir, _, _ = image_run
    audit = fedssl_command("audit", str(run_dir), timeout=300)
    assert audit.returncode == 0, audit.stdout + audit.stderr
