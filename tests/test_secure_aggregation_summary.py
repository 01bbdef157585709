"""The privacy statement of a run under secure aggregation (issue 22): against whom the
client-level ε holds, on what assumption, per round (contributors k, threshold t), from the
summary builder (server/privacy_summary.py) to report.md. Unit level: a ledger with the
server's client-level events and the facts metrics.jsonl records per round."""

from __future__ import annotations

from pathlib import Path

import pytest
from simulation_runs import append_spend, ledger_event

from common.privacy.accounting import ADD_REMOVE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GAUSSIAN_NO_AMPLIFICATION,
    PrivacyLedger,
)
from common.run_config import RunConfig
from server.ledger_sync import LedgerCoverage
from server.privacy_summary import privacy_section, secure_round_facts
from server.run_report import privacy_markdown

RUN_ID = "run-1"
Z = 1.0


def _line(rnd: int, threshold: int | None, contributors: int | None, sampled: int = 5,
          noise: str = "distributed", event: bool = True) -> dict:
    """A metrics.jsonl round line as RoundRecorder writes it under secure aggregation."""
    attempts = [{"attempt": 1, "sampled": sampled}]
    if threshold is not None:
        attempts[0]["secure_aggregation"] = {"threshold": threshold,
                                             "contributors": contributors,
                                             "client_noise": noise, "failures_by_stage": {}}
    return {"round": rnd, "clients_sampled": sampled, "attempts": attempts,
            "skipped": contributors == 0, "client_level_epsilon": 0.5 if event else None}


def _privacy(tmp_path: Path, lines: list[dict], sampling: str = "fixed", rate: float = 1.0,
             **settings) -> dict:
    """The privacy section of a run whose server wrote one client-level event per line that
    has one (rounds that released an aggregate)."""
    run = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner="run")
    history: list = []
    for line in lines:
        if line["client_level_epsilon"] is not None:
            event = ledger_event(line["round"], FEDERATION_NODE, CLIENT_LEVEL, Z, rate, 1, 0.0,
                                 run_id=RUN_ID)
            if sampling == "fixed":
                event["mechanism"] = GAUSSIAN_NO_AMPLIFICATION
            append_spend(run, history, event)
    config = RunConfig(**{"secure_aggregation": True, "client_dp": True,
                          "client_noise": "distributed", "client_noise_multiplier": Z,
                          "client_sampling": sampling, **settings})
    return privacy_section(run, LedgerCoverage(run_id=RUN_ID), config, {RUN_ID}, {}, 0,
                           secure_rounds=[secure_round_facts(x) for x in lines])


def test_distributed_noise_holds_against_the_server_with_k_at_least_t(tmp_path: Path):
    privacy = _privacy(tmp_path, [_line(1, 4, 5), _line(2, 4, 4), _line(3, 4, 0, event=False)])
    secure = privacy["secure_aggregation"]
    assert secure["client_noise"] == "distributed"
    assert secure["client_level_against_server"] is True
    assert secure["halted_rounds"] == [3]
    assert secure["tolerated_colluders"] == 0  # round 2: k = t, one colluder breaks it
    # fixed sampling claims no amplification: the same ε against the server
    assert secure["epsilon_against_server"] == pytest.approx(privacy["client_level"]["epsilon"])
    text = secure["statement"]
    assert "round 1: 5/4, round 2: 4/4" in text
    assert "Round(s) 3: secure aggregation halted" in text and "nothing was unmasked" in text
    assert "holds against the server too" in text and "at most 0 sampled client(s)" in text
    markdown = privacy_markdown(privacy)
    assert "Secure aggregation (Flower SecAgg+" in markdown and text in markdown


def test_colluders_tolerated_is_the_smallest_margin_over_the_threshold(tmp_path: Path):
    secure = _privacy(tmp_path, [_line(1, 4, 7, sampled=8), _line(2, 4, 6, sampled=8)]
                      )["secure_aggregation"]
    assert secure["client_level_against_server"] is True
    assert secure["tolerated_colluders"] == 2


def test_poisson_sampling_amplifies_nothing_against_the_server(tmp_path: Path):
    """The server chose the sample: ε against it composes the same events with q = 1."""
    privacy = _privacy(tmp_path, [_line(1, 3, 4), _line(2, 3, 3)], sampling="poisson",
                       rate=0.3)
    secure = privacy["secure_aggregation"]
    expected = epsilon_of([(Z, 1.0, 1)] * 2, 1e-5, ADD_REMOVE)
    assert secure["epsilon_against_server"] == pytest.approx(expected)
    assert expected > privacy["client_level"]["epsilon"]
    assert "subsampling amplifies nothing" in secure["statement"]
    assert f"{expected:.3f}" in secure["statement"]


def test_a_sum_unmasked_below_the_threshold_is_never_claimed(tmp_path: Path):
    """The protocol should make it impossible; should a record show it, the claim is off."""
    secure = _privacy(tmp_path, [_line(1, 4, 5), _line(2, 4, 2)])["secure_aggregation"]
    assert secure["client_level_against_server"] is False
    assert secure["rounds_below_threshold"] == [2]
    assert secure["epsilon_against_server"] is None and secure["tolerated_colluders"] is None
    assert "does NOT hold against the server" in secure["statement"]
    assert "z·√(k/t) = 0.707" in secure["statement"]


def test_a_round_without_a_record_or_without_a_ledger_event_voids_the_claim(tmp_path: Path):
    secure = _privacy(tmp_path, [_line(1, 4, 5), _line(2, None, None)])["secure_aggregation"]
    assert secure["client_level_against_server"] is False
    assert secure["rounds_without_record"] == [2]
    assert secure["epsilon_against_server"] is None
    # unmasked (the server saw the noisy sum) but skipped afterwards: no ledger event
    secure = _privacy(tmp_path / "b", [_line(1, 4, 5), _line(2, 4, 5, event=False)]
                      )["secure_aggregation"]
    assert secure["client_level_against_server"] is False
    assert secure["rounds_unmasked_without_ledger_event"] == [2]
    assert secure["epsilon_against_server"] == pytest.approx(
        epsilon_of([(Z, 1.0, 1)] * 2, 1e-5, ADD_REMOVE))


def test_server_noise_never_holds_against_the_server(tmp_path: Path):
    privacy = _privacy(tmp_path, [_line(1, 4, 5, noise="server")], client_noise="server")
    secure = privacy["secure_aggregation"]
    assert secure["client_noise"] == "server"
    assert secure["client_level_against_server"] is False
    assert secure["epsilon_against_server"] is None
    assert "NOT against the server" in secure["statement"]
    assert secure["statement"] in privacy_markdown(privacy)


def test_without_client_dp_the_sum_reaches_the_server_without_noise(tmp_path: Path):
    privacy = _privacy(tmp_path, [_line(1, 4, 5, event=False)], client_dp=False,
                       client_noise="server")
    assert privacy["client_level"] is None
    secure = privacy["secure_aggregation"]
    assert secure["client_noise"] is None and secure["client_level_against_server"] is False
    assert "No client-level DP" in secure["statement"]
    assert secure["statement"] in privacy_markdown(privacy)


def test_no_secure_aggregation_no_section(tmp_path: Path):
    privacy = _privacy(tmp_path, [_line(1, None, None)], secure_aggregation=False,
                       client_noise="server")
    assert privacy["secure_aggregation"] is None
    assert "not against the server." in privacy_markdown(privacy)
