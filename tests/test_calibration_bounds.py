"""A target no node can reach, and the calibration search's σ floor and ceiling.

`target-epsilon=0.001` (issue "Hardening" §4) once gave exit 0 with an untrained model. It is
still a valid setting (few steps at a small sample rate reach it), so the run config accepts
it, and each node decides: one whose calibrated σ would pass MAX_SIGMA refuses the round before
training, saying why, and spends nothing; one with many records (a small sample rate) trains,
at a σ in the hundreds, within ε ≤ 0.001. In the tiny test run (2 demo nodes of 608 and 2,432
records, batch 32, 4 steps) the first refuses and the second trains at σ ≈ 243: exit 0. A
run whose every node refused has no trained round and exits 1
(`test_a_run_no_node_can_afford_exits_1_naming_it`, slow tier: a real simulation).

The search itself is bounded both ways: σ doubles at most up to MAX_SIGMA, and halves at most
down to MIN_SIGMA. Without the floor a target loose enough for any σ halved σ towards zero
(about a thousand PLD evaluations, each slower as σ shrinks): the hang of `target-epsilon=1e300`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from simulation_runs import CONFIG, DELTA, TINY_RUN, simulate

from client.dp_training import poisson_sample_rate
from client.local_round import plan_round, run_client_round
from client.node_settings import node_settings
from common.privacy.accounting import (
    MAX_SIGMA,
    MIN_SIGMA,
    REPLACE_ONE,
    _bisect,
    calibrate_noise_multiplier,
    epsilon_of,
)
from common.privacy.dp_randomness import secret_generator
from common.privacy.ledger import PrivacyLedger
from common.run_config import RunConfig
from common.tasks import get_task

TINY_TARGET = 0.001
UNREACHABLE = dataclasses.replace(CONFIG, noise_multiplier="auto", target_epsilon=TINY_TARGET)


def test_a_tiny_target_is_a_valid_setting_because_some_runs_reach_it():
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), "target-epsilon": TINY_TARGET})
    assert config.target_epsilon == TINY_TARGET and config.fixed_noise_multiplier is None
    sigma = calibrate_noise_multiplier(TINY_TARGET, DELTA, 0.01, 1, REPLACE_ONE)
    assert sigma is not None and sigma < MAX_SIGMA  # one step at q = 0.01: σ ≈ 35
    assert epsilon_of([(sigma, 0.01, 1)], DELTA, REPLACE_ONE) <= TINY_TARGET


def test_a_tiny_target_makes_the_node_refuse_before_training_saying_why(tmp_path, icd_batch):
    node = node_settings({"state-dir": str(tmp_path / "state"), "data-dir": str(tmp_path)},
                         1, UNREACHABLE, None)
    assert node.max_epsilon == TINY_TARGET  # target-epsilon caps the node
    records = tuple(t.repeat(4, 1) for t in icd_batch)  # 32 real records
    rate = poisson_sample_rate(32, UNREACHABLE.batch_size)
    assert calibrate_noise_multiplier(TINY_TARGET, node.delta, rate, UNREACHABLE.local_steps,
                                      REPLACE_ONE, repeats=UNREACHABLE.num_rounds) is None
    task = get_task("mlm")
    torch.manual_seed(0)
    ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
    output = run_client_round(
        config=UNREACHABLE, task=task, global_state=task.build_model(UNREACHABLE).state_dict(),
        records=records, node=node, ledger=ledger, run_id="1", server_round=1, seed=1,
        dp_generator=secret_generator())
    assert output.update is None and output.entry is None
    assert output.refusal.startswith(f"budget: the cap ε={TINY_TARGET:g} ")
    assert f"noise multiplier above {MAX_SIGMA:g}" in output.refusal
    assert "raise target-epsilon" in output.refusal
    assert not PrivacyLedger.open(node.ledger_path, owner=node.node_id).spends()


def test_a_tiny_target_lets_a_node_with_many_records_train_at_huge_noise(tmp_path):
    """Why the run config cannot refuse the target: what it costs depends on each node's
    record count (its sample rate), which only the node knows."""
    config = dataclasses.replace(UNREACHABLE, batch_size=32, local_steps=4, num_rounds=1)
    node = node_settings({"state-dir": str(tmp_path), "data-dir": str(tmp_path)}, 1, config,
                         None)
    few, many = (poisson_sample_rate(n, config.batch_size) for n in (608, 2432))
    assert plan_round(config, node, few, [], 1).noise_multiplier is None
    plan = plan_round(config, node, many, [], 1)
    assert plan.noise_multiplier is not None and 100 < plan.noise_multiplier < MAX_SIGMA
    assert plan.projected <= TINY_TARGET


def test_a_spent_budget_is_still_refused_as_spent():
    """The other refusal: the cap is used up, whatever σ would be."""
    node = dataclasses.replace(
        node_settings({"state-dir": "/nonexistent", "data-dir": "/nonexistent"}, 1,
                      UNREACHABLE, None), max_epsilon=1.0)
    history = [(0.8, 0.25, 50)]  # far past ε = 1
    assert epsilon_of(history, node.delta, REPLACE_ONE) > 1.0
    plan = plan_round(UNREACHABLE, node, 0.25, history, 2)
    assert plan.noise_multiplier is None and "lifetime ε is already" in plan.refusal


def test_the_search_stops_at_the_sigma_floor_when_any_sigma_would_do():
    calls: list[float] = []

    def never_too_small(sigma: float) -> bool:
        calls.append(sigma)
        return False

    sigma = _bisect(never_too_small, 0.0, 1.0)
    assert sigma is not None and MIN_SIGMA / 2 < sigma <= MIN_SIGMA
    assert len(calls) <= 12  # 1 → 2⁻¹⁰ by halving: about ten evaluations, not a thousand
    assert min(calls) >= MIN_SIGMA / 2


def test_the_search_stops_at_the_sigma_ceiling_when_no_sigma_would_do():
    calls: list[float] = []

    def always_too_small(sigma: float) -> bool:
        calls.append(sigma)
        return True

    assert _bisect(always_too_small, 0.0, 1.0) is None
    assert max(calls) <= MAX_SIGMA and len(calls) <= 15  # 1 → 2¹³ by doubling


def test_the_floor_leaves_ordinary_answers_at_their_precision():
    threshold = 0.37  # σ below this is "too small"
    sigma = _bisect(lambda s: s < threshold, 0.0, 1.0)
    assert sigma is not None and threshold <= sigma <= threshold * (1 + 2e-3)


@pytest.mark.slow
def test_a_run_no_node_can_afford_exits_1_naming_it(tmp_path):
    """A real simulation at target-epsilon=0.001 in which no node can afford a round (12 steps
    at sample rates of 0.1 and 0.33): every node refuses (budget), the round is skipped, the
    summary is written, and `fedssl simulate` exits 1 instead of reporting an untrained model
    as trained."""
    settings = {**TINY_RUN, "num-clients": 2, "num-rounds": 1, "downstream": "false",
                "local-steps": 12, "batch-size": 256, "target-epsilon": TINY_TARGET}
    run_dir = tmp_path / "run"
    result, leftovers = simulate(run_dir, settings)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("fedssl: error: no federated round trained: all 1 round(s) were skipped "
            "(2 budget refusal(s))") in result.stderr
    assert not leftovers
    summary = (run_dir / "summary.json").read_text()
    assert '"rounds_trained": 0' in summary
    assert "noise multiplier above" in (run_dir / "metrics.jsonl").read_text()
