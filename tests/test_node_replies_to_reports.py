"""A round from the node's reply to the run's reports, without starting Flower: the server's
own set-up (RUN_DIR, run ledger, recorder, strategy, round instruction) sends a train message,
the real ClientApp answers it, the real strategy takes the reply, and the server writes
summary.json and report.md as it does at the end of a run; then `fedssl audit RUN_DIR`.

Covers what only this whole path can show: an error reply after the write-ahead spend carries
that spend into the run ledger and the reports; a run with `reproducible-noise` is stamped "no
DP guarantee" in summary.json, report.md and the audit; a node δ above 1/n is said.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from simulation_runs import SETTINGS, fedssl_in_process

import client.app as client_app
from common.privacy.ledger import SECRET_NOISE, SEEDED_NOISE, PrivacyLedger
from common.run_config import RunConfig
from common.run_layout import NODES_DIR, REPORT_FILE, SUMMARY_FILE
from common.tasks import get_task
from server.evaluation.pipeline import skipped_downstream
from server.federation_setup import build_strategy, round_instruction
from server.ledger_sync import LedgerCoverage
from server.privacy_summary import NO_GUARANTEE, privacy_section
from server.run_directory import RoundRecorder, prepare_run_dir
from server.run_ledger import open_run_ledger
from server.run_report import build_summary, epsilon_text, write_reports

NODE_ID = 11  # the node's Flower id; its ledger name is partition-0


class OneNode:
    """The only part of a Grid that the strategy's sampling uses."""

    def get_node_ids(self) -> list[int]:
        return [NODE_ID]


def _one_round(tmp_path: Path, node_config: dict[str, Any] | None = None,
               **settings: Any) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Round 1 of a one-node run: (RUN_DIR, the node's reply as it left the node, summary.json's
    content)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    config = RunConfig.from_mapping({**SETTINGS, "num-clients": 1, "num-rounds": 1,
                                     "min-clients": 1, "run-dir": str(tmp_path / "run"),
                                     **settings})
    task = get_task(config.task)
    run_dir = prepare_run_dir(config, task.public_files(config))
    ledger, run_id = open_run_ledger(run_dir)
    recorder = RoundRecorder(run_dir, config, ledger, run_id)
    coverage = LedgerCoverage(run_id=run_id)
    strategy = build_strategy(config, recorder, coverage, done=0)
    torch.manual_seed(config.seed)
    start = ArrayRecord(task.build_model(config).state_dict())
    instruction = round_instruction(config, task, run_id, run_dir / NODES_DIR)
    (message,) = strategy.configure_train(1, start, instruction.to_config_record(), OneNode())
    context = Context(run_id=5, node_id=NODE_ID, state=RecordDict(),
                      run_config=config.to_mapping(),
                      node_config={"partition-id": 0, "num-partitions": 1,
                                   **(node_config or {})})
    reply = client_app.train(message, context)
    # As it left the node (an accepted reply is rebuilt in the strategy's canonical shape).
    sent = {**reply.content["fedssl"], "arrays": "arrays" in reply.content,
            "metrics": dict(reply.content.metric_records.get("metrics", {}))}
    strategy.aggregate_train(1, [reply])  # the recorder stores the round's ledger entries
    privacy = privacy_section(ledger, coverage, config, recorder.run_ids, recorder.records,
                              recorder.refusals)
    write_reports(run_dir, build_summary(config, skipped_downstream(), privacy,
                                         recorder.rounds_done, 1.0, recorder.run_ids,
                                         recorder.rounds_trained))
    return run_dir, sent, json.loads((run_dir / SUMMARY_FILE).read_text())


def _node_ledger(run_dir: Path) -> PrivacyLedger:
    return PrivacyLedger.open(run_dir / NODES_DIR / "partition-0" / "ledger.sqlite",
                              owner="partition-0")


def test_a_round_that_fails_after_its_spend_reports_the_spend(tmp_path, monkeypatch):
    """Training raises after the write-ahead entry: the error reply says so and carries the
    node's ledger, the server stores the entry in the run ledger, and the reports show the
    node's ε from it (not "≥", not 0); the audit finds the run's copy complete and counts the
    unconfirmed round in full."""
    import client.train_message

    def crash(*args: Any, **kwargs: Any) -> None:
        raise ValueError("record 17 reads 'Cholera due to Vibrio cholerae'")  # private text

    monkeypatch.setattr(client.train_message, "train_locally", crash)
    run_dir, info, summary = _one_round(tmp_path, **{"reproducible-noise": False})

    assert info["status"] == "error" and info["spent"] is True
    assert info["reason"] == "training failed: ValueError (details in the node's log)"
    assert not info["arrays"]
    (spend,) = _node_ledger(run_dir).entries()  # written ahead, never confirmed
    assert [json.loads(text)["hash"] for text in info["ledger"]] == [spend.hash]

    run_ledger = PrivacyLedger.open(run_dir / "ledger.sqlite", owner="run")
    assert [e.hash for e in run_ledger.entries("partition-0")] == [spend.hash]
    privacy = summary["privacy"]
    (node,) = privacy["clients"]
    assert (node["node"], node["epsilon"], node["lower_bound"]) == ("partition-0",
                                                                    spend.epsilon, False)
    assert privacy["max_epsilon"] == spend.epsilon > 0 and not privacy["unknown_nodes"]
    assert privacy["dp_guarantee"] is True and spend.noise == SECRET_NOISE
    code, out, _ = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out
    assert "PASS" in out and "cross-checked 1 simulated node ledger(s)" in out
    assert f"{spend.epsilon:.4f}" in out and "counted in full" in out


def test_a_run_with_reproducible_noise_says_no_dp_guarantee_everywhere(tmp_path):
    """summary.json's privacy section, report.md and `fedssl audit RUN_DIR` of a run made with
    the simulation switch all say that there is no DP guarantee."""
    run_dir, info, summary = _one_round(tmp_path, **{"reproducible-noise": True})
    assert info["status"] == "trained"
    assert {e.noise for e in _node_ledger(run_dir).entries()} == {SEEDED_NOISE}

    privacy = summary["privacy"]
    assert privacy["dp_guarantee"] is False and privacy["noise"] == NO_GUARANTEE
    (node,) = privacy["clients"]
    assert node["dp_guarantee"] is False
    assert "NO DP GUARANTEE: reproducible noise in 1 of its events" in node["notes"]
    report = (run_dir / REPORT_FILE).read_text()
    assert f"**{NO_GUARANTEE}.**" in report  # the stamp above the privacy section
    assert epsilon_text(privacy).endswith(f" — {NO_GUARANTEE}")
    assert f"**{epsilon_text(privacy)}.**" in report

    code, out, _ = fedssl_in_process("audit", str(run_dir))
    assert code != 0
    assert "FAIL: NO DP GUARANTEE (reproducible noise)" in out


def test_a_node_delta_above_one_over_n_is_said_in_its_log_and_the_summary(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="flwr"):
        run_dir, info, summary = _one_round(tmp_path, node_config={"delta": 0.01})
    assert info["status"] == "trained"
    n = int(info["metrics"]["num-examples"])
    assert 0.01 > 1 / n
    assert any(f"delta 0.01 is above 1/n = 1/{n}" in line for line in caplog.messages), \
        caplog.messages
    (node,) = summary["privacy"]["clients"]
    assert node["delta"] == 0.01 and f"δ=0.01 is above 1/n = 1/{n}" in node["notes"]
    assert f"δ=0.01 is above 1/n = 1/{n}" in (run_dir / REPORT_FILE).read_text()
