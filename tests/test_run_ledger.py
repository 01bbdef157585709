"""The run ledger: the relay of node entries (one durable transaction per round, add_many) and
the federation's own client-level events (record_round)."""

from __future__ import annotations

import json
from pathlib import Path

from simulation_runs import RATE, SIGMA, STEPS, append_spend, ledger_event

from common.privacy.accounting import ACCOUNTANT, ADD_REMOVE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    PrivacyLedger,
)
from server.client_level_dp import ClientDpSettings
from server.round_record import RoundRecord
from server.run_ledger import open_run_ledger, record_round
from simulations.cli import main


def test_add_many_relays_new_entries_once_and_keeps_the_chains(tmp_path: Path):
    node = PrivacyLedger.open(tmp_path / "node.sqlite", owner="partition-0")
    history: list[tuple[float, float, int]] = []
    entries = [append_spend(node, history, ledger_event(r, "partition-0", RECORD_LEVEL, SIGMA,
                                                        RATE, STEPS, 8.0), None) for r in (1, 2, 3)]
    run = PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite", owner="run")
    assert run.add_many(entries[:2]) == 2
    assert run.add_many(entries) == 1  # known entries are skipped by hash
    assert [e.hash for e in run.entries("partition-0")] == [e.hash for e in entries]
    (tmp_path / "run" / "summary.json").write_text(json.dumps(
        {"privacy": {"ledger": {"file": "ledger.sqlite", **run.head()}}}))
    assert main(["audit", str(tmp_path / "run")]) == 0


def test_record_round_writes_the_federation_event_for_add_remove_clients(tmp_path: Path):
    node = PrivacyLedger.open(tmp_path / "node.sqlite", owner="partition-0")
    sent = append_spend(node, [], ledger_event(1, "partition-0", RECORD_LEVEL, SIGMA, RATE, STEPS,
                                               8.0), None)
    run, run_id = open_run_ledger(tmp_path / "run")
    assert open_run_ledger(tmp_path / "run")[1] == run_id  # drawn once, kept in the ledger
    dp = ClientDpSettings(noise_multiplier=1.0, clip_norm=5.0, sample_rate=0.1, poisson=True)
    first = record_round(run, RoundRecord(server_round=1, sampled=10, ledger=[sent],
                                          client_dp=dp), run_id, 1e-5)
    second = record_round(run, RoundRecord(server_round=2, sampled=10, client_dp=dp), run_id,
                          1e-5)
    assert first is not None and second is not None
    assert run.entries("partition-0") == [sent]  # the node's entry, verbatim
    for entry, rounds in ((first, 1), (second, 2)):
        assert (entry.node_id, entry.guarantee, entry.mechanism) == (
            FEDERATION_NODE, CLIENT_LEVEL, POISSON_GAUSSIAN)
        assert (entry.accountant, entry.relation, entry.noise) == (ACCOUNTANT, ADD_REMOVE,
                                                                   SECRET_NOISE)
        # Cumulative over the federation's rounds, add/remove-one client, PLD.
        assert entry.epsilon == epsilon_of([(1.0, 0.1, 1)] * rounds, 1e-5, ADD_REMOVE)
    assert record_round(run, RoundRecord(server_round=3, sampled=10), run_id, 1e-5) is None
    seeded = record_round(run, RoundRecord(server_round=3, sampled=10, client_dp=dp), run_id,
                          1e-5, reproducible_noise=True)
    assert seeded is not None and seeded.noise == SEEDED_NOISE and seeded.reproducible_noise
