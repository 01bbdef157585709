"""A client round against its durable ledger: spend survives rounds and runs, is written before
training, and the node refuses exactly the round that would cross its budget."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
from conftest import TINY
from flwr.app import RecordDict
from opacus.accountants import RDPAccountant

from client.dp_training import poisson_sample_rate
from client.local_round import run_client_round
from client.node_settings import NodeSettings, node_settings
from client.privacy_state import load_noise_multiplier, save_noise_multiplier
from common.privacy_accounting import RDP_ORDERS, epsilon_of
from common.privacy_ledger import RECORD_LEVEL, PrivacyLedger, unconfirmed
from common.run_config import ConfigError, RunConfig
from common.tasks import get_task

CONFIG = RunConfig(
    hidden_size=TINY.hidden_size, num_layers=TINY.num_layers, num_heads=TINY.num_heads,
    intermediate_size=TINY.intermediate_size, max_length=TINY.max_length,
    batch_size=8, local_steps=3, noise_multiplier="1.1", num_rounds=3,
)
SIGMA = 1.1


def _node(tmp_path: Path, max_epsilon: float = 0.0) -> NodeSettings:
    return NodeSettings(node_id="hospital-a", state_dir=tmp_path / "state",
                        max_epsilon=max_epsilon, delta=1e-5, partition_id=None)


def _round(node: NodeSettings, records, server_round: int, run_id: str = "1", **kwargs):
    task = get_task("mlm")
    torch_state = task.build_model(CONFIG).state_dict()
    ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)  # re-opened: a restart
    return run_client_round(
        config=CONFIG, task=task, global_state=torch_state, records=records, node=node,
        ledger=ledger, noise_multiplier=SIGMA, run_id=run_id, server_round=server_round,
        seed=server_round, **kwargs,
    )


@pytest.fixture()
def records(icd_batch):
    return tuple(t.repeat(4, 1) for t in icd_batch)  # 32 real records


def test_ledger_history_across_rounds_and_runs_equals_one_accountant(tmp_path, records):
    node = _node(tmp_path)
    outputs = [_round(node, records, r, run_id=run) for run in ("1", "2") for r in (1, 2, 3)]
    rate = poisson_sample_rate(32, CONFIG.batch_size)
    uninterrupted = RDPAccountant()
    for _ in range(6 * CONFIG.local_steps):
        uninterrupted.step(noise_multiplier=SIGMA, sample_rate=rate)
    expected = uninterrupted.get_epsilon(1e-5, alphas=RDP_ORDERS)
    last = outputs[-1]
    assert last.metrics["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert last.metrics["total-steps"] == 6 * CONFIG.local_steps
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    entries = ledger.spends()
    assert [(e.run_id, e.round) for e in entries] == [(r, n) for r in "12" for n in (1, 2, 3)]
    assert [e.epsilon for e in entries] == [o.metrics["epsilon"] for o in outputs]
    # Each write-ahead entry is followed by its confirmation, all in one chain.
    chain = ledger.entries()
    assert [e.is_confirmation for e in chain] == [False, True] * 6
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(chain))
    assert all(c.epsilon == w.epsilon and c.steps == 0 for w, c in zip(chain[::2], chain[1::2]))
    # Forgetting earlier rounds (a fresh accountant per round) would under-count:
    assert epsilon_of([(SIGMA, rate, CONFIG.local_steps)], 1e-5) < 0.6 * expected


def test_spend_is_recorded_before_training_so_a_crash_over_counts(tmp_path, records):
    node = _node(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during local training")

    with pytest.raises(KeyboardInterrupt):
        _round(node, records, 1, train=crash)
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    history = ledger.history("hospital-a", RECORD_LEVEL)
    assert history == [(SIGMA, poisson_sample_rate(32, CONFIG.batch_size), 3)]
    assert not any(e.is_confirmation for e in ledger.entries())  # the crash: never confirmed
    crashed = ledger.entries()[-1]
    after_restart = _round(node, records, 2)  # the accountant continues from the ledger
    assert after_restart.metrics["total-steps"] == 6
    assert after_restart.metrics["epsilon"] > crashed.epsilon  # never lower than the crash
    assert [e.round for e in unconfirmed(ledger.entries())] == [1]  # round 2 was confirmed


def test_node_refuses_exactly_the_round_that_would_cross_its_budget(tmp_path, records):
    rate = poisson_sample_rate(32, CONFIG.batch_size)
    per_round = [epsilon_of([(SIGMA, rate, CONFIG.local_steps * k)], 1e-5) for k in (1, 2, 3)]
    budget = (per_round[1] + per_round[2]) / 2  # rounds 1, 2 fit; round 3 would cross
    node = _node(tmp_path, max_epsilon=budget)
    outputs = [_round(node, records, r) for r in (1, 2, 3, 4)]
    assert [o.refusal == "" for o in outputs] == [True, True, False, False]
    assert outputs[2].update is None and "max-epsilon" in outputs[2].refusal
    assert outputs[2].metrics["projected-epsilon"] == pytest.approx(per_round[2])
    ledger = PrivacyLedger.open(node.ledger_path, "hospital-a")
    assert len(ledger.spends()) == 2  # a refusal spends (and records) nothing
    assert epsilon_of(ledger.history("hospital-a", RECORD_LEVEL), 1e-5) <= budget


def test_run_config_can_lower_but_never_raise_a_node_budget(tmp_path):
    own = {"state-dir": str(tmp_path), "data-dir": str(tmp_path), "max-epsilon": 3.0,
           "node-name": "h1"}
    assert node_settings(own, 7, CONFIG, None).max_epsilon == 3.0
    lower = dataclasses.replace(CONFIG, client_max_epsilon=2.0)
    assert node_settings(own, 7, lower, None).max_epsilon == 2.0
    higher = dataclasses.replace(CONFIG, client_max_epsilon=30.0)
    assert node_settings(own, 7, higher, None).max_epsilon == 3.0
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
    deployed = node_settings(both, 7, CONFIG, None)
    assert deployed.node_id == "node-7" and deployed.data_dir == tmp_path.resolve()
    simulated = node_settings({"partition-id": 2, "num-partitions": 5}, 9, CONFIG, "/sim")
    assert simulated.node_id == "partition-2" and simulated.state_dir == Path("/sim/partition-2")


def test_sigma_is_kept_for_the_rest_of_the_run():
    state = RecordDict()
    assert load_noise_multiplier(state) is None
    save_noise_multiplier(state, 0.73)
    assert load_noise_multiplier(state) == 0.73
