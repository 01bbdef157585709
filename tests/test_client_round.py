"""A client round against its durable ledger: spend survives rounds and runs, is written before
training, σ is calibrated to what is left of the budget, the node refuses exactly the round that
would cross it, and the DP noise is secret unless the simulation switch says otherwise."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import time
from pathlib import Path

import psutil
import pytest
import torch
from simulation_runs import CONFIG, DELTA, SIGMA, hospital_node

from client.dp_training import poisson_sample_rate
from client.local_round import plan_round, run_client_round
from client.node_settings import NodeSettings, node_settings
from common.model_updates import update_norm
from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.dp_randomness import secret_generator, seeded_generator
from common.privacy.ledger import (
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    PrivacyLedger,
    unconfirmed,
)
from common.run_config import ConfigError, RunConfig
from common.tasks import get_task


def _round(node: NodeSettings, records, server_round: int, run_id: str = "1",
           config: RunConfig = CONFIG, generator: torch.Generator | None = None,
           global_state=None, **kwargs):
    task = get_task("mlm")
    if global_state is None:
        torch.manual_seed(0)
        global_state = task.build_model(config).state_dict()
    ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)  # re-opened: a restart
    return run_client_round(
        config=config, task=task, global_state=global_state, records=records, node=node,
        ledger=ledger, run_id=run_id, server_round=server_round, seed=server_round,
        dp_generator=generator or secret_generator(), **kwargs,
    )


@pytest.fixture()
def records(icd_batch):
    return tuple(t.repeat(4, 1) for t in icd_batch)  # 32 real records


def test_ledger_history_across_rounds_and_runs_is_one_composition(tmp_path, records):
    node = hospital_node(tmp_path)
    outputs = [_round(node, records, r, run_id=run) for run in ("1", "2") for r in (1, 2, 3)]
    rate = poisson_sample_rate(32, CONFIG.batch_size)
    events = [(SIGMA, rate, CONFIG.local_steps)] * 6
    last = outputs[-1]
    assert last.metrics["epsilon"] == epsilon_of(events, DELTA, REPLACE_ONE)
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    entries = ledger.spends()
    assert [(e.run_id, e.round) for e in entries] == [(r, n) for r in "12" for n in (1, 2, 3)]
    assert [e.epsilon for e in entries] == [o.metrics["epsilon"] for o in outputs]
    assert {(e.relation, e.noise, e.accountant) for e in entries} == {
        (REPLACE_ONE, SECRET_NOISE, "pld")}
    # Each write-ahead entry is followed by its confirmation, all in one chain.
    chain = ledger.entries()
    assert [e.is_confirmation for e in chain] == [False, True] * 6
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(chain))
    assert all(c.epsilon == w.epsilon and c.steps == 0 for w, c in zip(chain[::2], chain[1::2]))
    # Timestamps stay to the hour: the pair would otherwise time the training.
    assert all(e.timestamp.endswith(":00:00+00:00") for e in chain)
    # Forgetting earlier rounds (a fresh accountant per round) would under-count:
    assert epsilon_of(events[:1], DELTA, REPLACE_ONE) < 0.6 * last.metrics["epsilon"]
    # What the node sends: this run's entries only (run "2"), chained to the earlier ones.
    sent = ledger.run_entries("hospital-a", "2")
    assert [e.run_id for e in sent] == ["2"] * 6 and sent[0].prev_hash == chain[5].hash


def test_spend_is_recorded_before_training_so_a_crash_over_counts(tmp_path, records):
    node = hospital_node(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during local training")

    with pytest.raises(KeyboardInterrupt):
        _round(node, records, 1, train=crash)
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    rate = poisson_sample_rate(32, CONFIG.batch_size)
    assert ledger.history("hospital-a", RECORD_LEVEL) == [(SIGMA, rate, 3)]
    assert not any(e.is_confirmation for e in ledger.entries())  # the crash: never confirmed
    crashed = ledger.entries()[-1]
    after_restart = _round(node, records, 2)  # the history continues from the ledger
    assert after_restart.metrics["epsilon"] == epsilon_of([(SIGMA, rate, 3)] * 2, DELTA,
                                                          REPLACE_ONE)
    assert after_restart.metrics["epsilon"] > crashed.epsilon  # never lower than the crash
    assert [e.round for e in unconfirmed(ledger.entries())] == [1]  # round 2 was confirmed


@pytest.mark.parametrize("ran", [{"steps": 2}, {"sample_rate": 0.5}])
def test_an_update_the_ledger_entry_does_not_describe_is_never_released(tmp_path, records, ran):
    """Training that ran other steps or another q than the write-ahead entry records raises
    before any update is built; the entry stays, unconfirmed (counted, reported as crashed)."""
    from client.dp_training import LocalResult

    node = hospital_node(tmp_path)
    rate = poisson_sample_rate(32, CONFIG.batch_size)

    def mismatched(*args, **kwargs):
        return LocalResult(**{"mean_loss": 1.0, "steps": CONFIG.local_steps,
                              "sample_rate": rate, **ran})

    with pytest.raises(RuntimeError, match="but the ledger recorded 3 at q=0.25"):
        _round(node, records, 1, train=mismatched)
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    assert ledger.history("hospital-a", RECORD_LEVEL) == [(SIGMA, rate, 3)]
    assert [e.round for e in unconfirmed(ledger.entries())] == [1]


def test_node_refuses_exactly_the_round_that_would_cross_its_budget(tmp_path, records):
    rate = poisson_sample_rate(32, CONFIG.batch_size)
    per_round = [epsilon_of([(SIGMA, rate, CONFIG.local_steps)] * k, DELTA, REPLACE_ONE)
                 for k in (1, 2, 3)]
    budget = (per_round[1] + per_round[2]) / 2  # rounds 1, 2 fit; round 3 would cross
    node = hospital_node(tmp_path, max_epsilon=budget)
    outputs = [_round(node, records, r) for r in (1, 2, 3, 4)]
    assert [o.refusal == "" for o in outputs] == [True, True, False, False]
    assert outputs[2].update is None and "past the node's cap" in outputs[2].refusal
    assert outputs[2].metrics["projected-epsilon"] == pytest.approx(per_round[2])
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    assert len(ledger.spends()) == 2  # a refusal spends (and records) nothing
    assert epsilon_of(ledger.history("hospital-a", RECORD_LEVEL), DELTA, REPLACE_ONE) <= budget


AUTO = dataclasses.replace(CONFIG, noise_multiplier="auto", target_epsilon=3.0, num_rounds=3)


def test_calibrated_sigma_lands_the_planned_rounds_at_the_target(tmp_path, records):
    node = node_settings({"state-dir": str(tmp_path / "s"), "data-dir": str(tmp_path)}, 1,
                         AUTO, None)
    assert node.max_epsilon == 3.0  # the cap defaults to the target
    outputs = [_round(node, records, r, config=AUTO) for r in (1, 2, 3)]
    assert all(not o.refusal for o in outputs)
    assert 3.0 * 0.98 <= outputs[-1].metrics["epsilon"] <= 3.0
    # σ stays the plan's σ while nothing unplanned happens (recomputed from the ledger).
    sigmas = [o.metrics["noise-multiplier"] for o in outputs]
    assert max(sigmas) / min(sigmas) < 1.02


def test_unplanned_spend_raises_sigma_and_never_passes_the_target(tmp_path, records):
    """Lifetime spend from an earlier run and a retried round are absorbed by more noise in
    the remaining rounds, never by ending above target-epsilon."""
    node = node_settings({"state-dir": str(tmp_path / "s"), "data-dir": str(tmp_path)}, 1,
                         AUTO, None)
    first = _round(node, records, 1, config=AUTO, run_id="earlier")
    fresh = first.metrics["noise-multiplier"]
    outputs = [_round(node, records, r, config=AUTO, run_id="now") for r in (1, 1, 2, 3)]
    sigmas = [o.metrics["noise-multiplier"] for o in outputs if not o.refusal]
    assert sigmas and min(sigmas) > fresh
    ledger = PrivacyLedger.open(node.ledger_path, node.node_id)
    assert epsilon_of(ledger.history(node.node_id, RECORD_LEVEL), DELTA, REPLACE_ONE) <= 3.0


def test_node_delta_is_the_delta_of_calibration_claims_and_budget(tmp_path):
    config = dataclasses.replace(AUTO, delta=1e-5)
    loose = node_settings({"state-dir": str(tmp_path), "data-dir": str(tmp_path),
                           "delta": 1e-3}, 1, config, None)
    rate = poisson_sample_rate(32, 8)
    plan = plan_round(config, loose, rate, [], 1)
    assert plan.noise_multiplier is not None
    steps = config.num_rounds * config.local_steps
    at_own = epsilon_of([(plan.noise_multiplier, rate, steps)], 1e-3, REPLACE_ONE)
    at_run = epsilon_of([(plan.noise_multiplier, rate, steps)], 1e-5, REPLACE_ONE)
    assert 3.0 * 0.98 <= at_own <= 3.0 < at_run  # calibrated at the node's own δ


def test_two_runs_with_identical_settings_release_different_updates(tmp_path, records):
    """Secret noise: the same seed, data and model give a different Δ every time, so whoever
    knows the run seed cannot recompute a release. With the switch, bit for bit the same."""
    torch.manual_seed(0)
    state = get_task("mlm").build_model(CONFIG).state_dict()
    secret = [_round(hospital_node(tmp_path / str(i)), records, 1, global_state=state) for i in (1, 2)]
    diff = {k: secret[0].update[k] - secret[1].update[k] for k in state}
    assert update_norm(diff) > 1e-3
    config = dataclasses.replace(CONFIG, reproducible_noise=True)
    seeded = [_round(hospital_node(tmp_path / str(i)), records, 1, config=config, global_state=state,
                     generator=seeded_generator(7)) for i in (3, 4)]
    assert all(torch.equal(seeded[0].update[k], seeded[1].update[k]) for k in state)
    assert seeded[0].entry.noise == SEEDED_NOISE and secret[0].entry.noise == SECRET_NOISE


def _hold_round(state_dir: str, ready, release) -> None:
    """Another process: reserve a round of the same node and keep it in flight."""
    ledger = PrivacyLedger.open(Path(state_dir) / "ledger.sqlite", "hospital-a")
    ledger.reserve("hospital-a", lambda entries, busy: {
        "run_id": "1", "round": 1, "guarantee": RECORD_LEVEL, "mechanism": "m",
        "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 1, "delta": DELTA,
        "accountant": "pld", "epsilon": 1.0, "max_epsilon": 0.0, "relation": REPLACE_ONE,
        "noise": SECRET_NOISE})
    ready.set()
    release.wait(60)


def test_a_second_round_of_a_node_is_refused_while_one_is_in_flight(tmp_path, records):
    node = hospital_node(tmp_path)
    node.state_dir.mkdir(parents=True)
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(
        target=_hold_round, args=(str(node.state_dir), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        busy = _round(node, records, 2)
        assert busy.update is None and busy.refusal.startswith("busy")
    finally:
        release.set()
        holder.join(60)
    time.sleep(0.1)
    after = _round(node, records, 2)  # the holder is gone: its entry counts as crashed
    assert not after.refusal


def test_budget_check_and_append_are_one_transaction(tmp_path):
    """Two writers of one node cannot both pass a check that only one fits: the second sees
    the first's write-ahead entry when it decides."""
    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", "n")
    seen = []

    def decide(entries, busy):
        seen.append(len(entries))
        return "full" if entries else {
            "run_id": "1", "round": 1, "guarantee": RECORD_LEVEL, "mechanism": "m",
            "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 1, "delta": DELTA,
            "accountant": "pld", "epsilon": 1.0, "max_epsilon": 1.0,
            "relation": REPLACE_ONE, "noise": SECRET_NOISE}

    assert not isinstance(ledger.reserve("n", decide), str)
    assert ledger.reserve("n", decide) == "full" and seen == [0, 1]


def test_run_config_can_lower_but_never_raise_a_node_budget(tmp_path):
    own = {"state-dir": str(tmp_path), "data-dir": str(tmp_path), "max-epsilon": 3.0,
           "node-name": "h1"}
    assert node_settings(own, 7, CONFIG, None).max_epsilon == 3.0
    lower = dataclasses.replace(CONFIG, client_max_epsilon=2.0)
    assert node_settings(own, 7, lower, None).max_epsilon == 2.0
    higher = dataclasses.replace(CONFIG, client_max_epsilon=30.0)
    assert node_settings(own, 7, higher, None).max_epsilon == 3.0
    assert node_settings(own, 7, dataclasses.replace(AUTO, target_epsilon=1.5),
                         None).max_epsilon == 1.5  # calibrated runs cap at the target
    # Nor can a larger run δ loosen it: the node accounts at its own δ.
    loose = dataclasses.replace(CONFIG, delta=0.1)
    assert node_settings(own, 7, loose, None).delta == 1e-5


def test_node_settings_errors_name_the_node_config_key(tmp_path):
    with pytest.raises(ConfigError, match="state-dir"):
        node_settings({"data-dir": str(tmp_path)}, 7, CONFIG, None)
    with pytest.raises(ConfigError, match="data-dir"):
        node_settings({"state-dir": str(tmp_path)}, 7, CONFIG, None)
    both = {"state-dir": str(tmp_path), "data-dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="max-epsilon"):
        node_settings({**both, "max-epsilon": "lots"}, 7, CONFIG, None)
    with pytest.raises(ConfigError, match="delta"):
        node_settings({**both, "delta": 2.0}, 7, CONFIG, None)
    with pytest.raises(ConfigError, match="reserved"):
        node_settings({**both, "node-name": "federation"}, 7, CONFIG, None)
    deployed = node_settings(both, 7, CONFIG, None)
    assert deployed.node_id == "node-7" and deployed.data_dir == tmp_path.resolve()
    simulated = node_settings({"partition-id": 2, "num-partitions": 5}, 9, CONFIG, "/sim")
    assert simulated.node_id == "partition-2" and simulated.state_dir == Path("/sim/partition-2")


def test_a_reused_pid_does_not_keep_a_node_busy(tmp_path):
    """In-flight means: the same process (pid and start time) still runs. A pid that a later,
    unrelated process reuses does not block the node."""
    import sqlite3

    ledger = PrivacyLedger.open(tmp_path / "ledger.sqlite", "n")
    event = {"run_id": "1", "round": 1, "guarantee": RECORD_LEVEL, "mechanism": "m",
             "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 1, "delta": DELTA,
             "accountant": "pld", "epsilon": 1.0, "max_epsilon": 0.0, "relation": REPLACE_ONE,
             "noise": SECRET_NOISE}
    entry = ledger.reserve("n", lambda entries, busy: event)
    parent = 1  # alive (init), but it did not write the entry: a "reused" pid
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("UPDATE in_flight SET pid=? WHERE hash=?", (parent, entry.hash))
    seen = []
    ledger.reserve("n", lambda entries, busy: seen.append(busy) or "stop")
    assert seen == [False]
    with sqlite3.connect(ledger.path) as conn:  # now the real start time of that process
        conn.execute("UPDATE in_flight SET process_started=? WHERE hash=?",
                     (psutil.Process(parent).create_time(), entry.hash))
    ledger.reserve("n", lambda entries, busy: seen.append(busy) or "stop")
    assert seen == [False, True]
