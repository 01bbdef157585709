"""The run report: the one-sentence verdict (did pretraining beat every baseline of the run?),
the privacy section, built from the run's ledger (server/privacy_summary.py), and wording that
is true of the run (the federated arms' privacy tag, the test split's class balance)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from simulation_runs import RATE, SIGMA, STEPS, append_spend, ledger_event

from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.ledger import (
    FEDERATION_NODE,
    GENESIS,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    LedgerEntry,
    PrivacyLedger,
)
from common.run_config import RunConfig
from server.evaluation.arm_labels import federated_label, privacy_tag
from server.evaluation.pipeline import class_balance
from server.ledger_sync import LedgerCoverage
from server.privacy_summary import privacy_section
from server.run_report import (
    build_summary,
    epsilon_text,
    pretraining_verdict,
    privacy_markdown,
    summary_table,
    write_reports,
)

ARMS = [["finetuned", "SSL + fine-tune"], ["baseline", "scratch"], ["tfidf", "TF-IDF"],
        ["probe", "SSL probe"], ["probe_random", "random probe"], ["pruned", "pruned"]]


def _summary(**f1: float) -> dict:
    return {"arms": ARMS, **{arm: {"accuracy": 0.5, "macro_f1": f1.get(arm, 0.1),
                                   "sparsity": 0.5} for arm, _ in ARMS}}


def test_a_baseline_that_wins_is_named_with_the_gap():
    summary = _summary(finetuned=0.40, baseline=0.45, tfidf=0.44, pruned=0.9)
    verdict = pretraining_verdict(summary)
    assert verdict.startswith("Pretraining did not pay in this run")
    assert "(scratch, macro-F1 0.450)" in verdict and "(SSL + fine-tune) is -0.050" in verdict
    assert verdict in summary_table(summary)  # printed by `fedssl simulate` and in report.md


def test_pretraining_that_wins_leads_the_best_baseline():
    verdict = pretraining_verdict(_summary(probe=0.52, baseline=0.45, probe_random=0.47))
    assert "Pretraining paid in this run: SSL probe leads" in verdict
    assert "(random probe) by +0.050" in verdict


def test_no_verdict_without_downstream_arms():
    assert pretraining_verdict({"arms": []}) == ""



RUN_ID = "run-1"
History = list[tuple[float, float, int]]


def _spend_at(ledger: PrivacyLedger, history: History, node: str, rnd: int, delta: float,
              run_id: str = RUN_ID) -> None:
    """One round of a node as it writes it, claiming at its own δ."""
    history.append((SIGMA, RATE, STEPS))
    event = ledger_event(rnd, node, RECORD_LEVEL, SIGMA, RATE, STEPS, 0.0, run_id=run_id)
    ledger.append(**{**event, "delta": delta, "epsilon": epsilon_of(history, delta, REPLACE_ONE)})


def test_privacy_section_marks_unseen_spend_and_puts_every_node_at_the_run_delta(tmp_path: Path):
    config = RunConfig()  # δ = 1e-5
    run = PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite", owner="run")
    own = {n: (PrivacyLedger.open(tmp_path / f"{n}.sqlite", owner=n), [])
           for n in ("partition-0", "partition-1", "partition-2")}
    # partition-2 spent in an earlier run (another federation) and sends only this run's part.
    _spend_at(*own["partition-2"], "partition-2", 1, 1e-4, run_id="run-0")
    deltas = {"partition-0": 1e-6, "partition-1": 1e-5, "partition-2": 1e-4}
    flower_ids = {"partition-0": 1, "partition-1": 2, "partition-2": 4}
    coverage = LedgerCoverage(run_id=RUN_ID)
    for rnd in (1, 2):
        # Flower node 3 is sampled in round 2 and never heard from at all.
        coverage.sending(set(flower_ids.values()) | ({3} if rnd == 2 else set()), rnd)
        for node, (ledger, history) in own.items():
            _spend_at(ledger, history, node, rnd, deltas[node])
            if node == "partition-1" and rnd == 2:
                continue  # its round-2 reply (and so its spend) never reaches the server
            run.add_many(ledger.run_entries(node, RUN_ID))
            coverage.replied(flower_ids[node], node, rnd, spent=True)

    privacy = privacy_section(run, coverage, config, {RUN_ID}, {"partition-0": 5000}, 0)
    clients = {c["node"]: c for c in privacy["clients"]}
    assert set(clients) == set(own)
    # partition-1 lost a reply; partition-2's lifetime ε cannot be put at the run's δ.
    assert [c["node"] for c in privacy["clients"] if c["lower_bound"]] == ["partition-1",
                                                                           "partition-2"]
    assert any(n.startswith("≥: ") and "round(s) 2" in n for n in clients["partition-1"]["notes"])
    assert privacy["max_epsilon_lower_bound"] is True
    (unknown,) = privacy["unknown_nodes"]
    assert unknown["node"] == "node-3" and "round(s) 2" in unknown["reason"]
    assert epsilon_text(privacy).startswith(f"max record-level ε ≥ {privacy['max_epsilon']:.3f} "
                                            "at δ=1e-05 (replace-one neighbours, PLD)")
    one_round, two_rounds = [(SIGMA, RATE, STEPS)], [(SIGMA, RATE, STEPS)] * 2
    # A δ other than the run's: recomputed from the node's history at the run's δ.
    zero = clients["partition-0"]
    assert zero["delta"] == 1e-6 and zero["epsilon"] == epsilon_of(two_rounds, 1e-6, REPLACE_ONE)
    assert zero["epsilon_at_run_delta"] == epsilon_of(two_rounds, 1e-5, REPLACE_ONE)
    assert zero["epsilon_at_run_delta"] < zero["epsilon"]
    assert zero["run_epsilon"] == zero["epsilon"] and zero["run_steps"] == 2 * STEPS
    assert not zero["lower_bound"] and zero["num_examples"] == 5000
    one = clients["partition-1"]  # at the run's δ: its claim as the server last saw it
    assert one["epsilon_at_run_delta"] == one["epsilon"] == epsilon_of(one_round, 1e-5,
                                                                       REPLACE_ONE)
    # Earlier spend withheld at a larger δ: not recomputable at the run's δ, where ε is larger
    # than the claim, so the claim stands there as a lower bound ("≥"), never left out.
    two = clients["partition-2"]
    assert two["epsilon_at_run_delta"] == two["epsilon"] and two["lower_bound"]
    assert two["epsilon"] == epsilon_of([(SIGMA, RATE, STEPS)] * 3, 1e-4, REPLACE_ONE)
    assert two["run_epsilon"] == epsilon_of(two_rounds, 1e-4, REPLACE_ONE) < two["epsilon"]
    assert any("earlier spend withheld" in n for n in two["notes"])
    assert any(n.startswith("≥ at the run's δ") for n in two["notes"])
    assert privacy["max_epsilon"] == max(c["epsilon_at_run_delta"] for c in clients.values())
    assert privacy["dp_guarantee"] is True and privacy["relation"] == REPLACE_ONE
    assert privacy["ledger"] == {"file": "ledger.sqlite", **run.head()}
    markdown = privacy_markdown(privacy)
    assert "| partition-1 | - |" in markdown and f"| ≥ {one['epsilon']:.3f} |" in markdown
    assert "- node-3: sampled, but the server never saw its ledger" in markdown

    # The ledger sync brings partition-1's round-2 spend after all: no longer a lower bound
    # (partition-2's δ still is, and node 3 still is unknown).
    run.add_many(own["partition-1"][0].run_entries("partition-1", RUN_ID))
    privacy = privacy_section(run, coverage, config, {RUN_ID}, {}, 0)
    assert [c["node"] for c in privacy["clients"] if c["lower_bound"]] == ["partition-2"]
    assert [u["node"] for u in privacy["unknown_nodes"]] == ["node-3"]
    assert privacy["max_epsilon_lower_bound"] is True


def test_after_a_restart_a_node_that_does_not_answer_the_sync_is_a_lower_bound(tmp_path: Path):
    """The restarted server does not know whom it sampled before: every node in its ledger
    that stays silent at the sync may hold spend it never saw."""
    run = PrivacyLedger.open(tmp_path / "ledger.sqlite", owner="run")
    for node in ("partition-0", "partition-1"):
        ledger, history = PrivacyLedger.open(tmp_path / f"{node}.sqlite", owner=node), []
        _spend_at(ledger, history, node, 1, 1e-5)
        run.add_many(ledger.run_entries(node, RUN_ID))
    coverage = LedgerCoverage(run_id=RUN_ID, unknown_history=True)
    coverage.synced.add("partition-0")
    assert list(coverage.missing(run)) == ["partition-1"]
    privacy = privacy_section(run, coverage, RunConfig(), {RUN_ID}, {}, 0)
    assert [c["node"] for c in privacy["clients"] if c["lower_bound"]] == ["partition-1"]
    assert privacy["max_epsilon_lower_bound"] is True


def test_a_reply_can_carry_only_its_own_nodes_entries():
    """A node cannot write into another node's chain, nor into the server's own."""
    from flwr.app import ConfigRecord, RecordDict

    from common.protocol import reply_ledger
    from server.ledger_sync import ledger_entries

    def entry(node_id: str) -> str:
        fields = ledger_event(1, node_id, RECORD_LEVEL, SIGMA, RATE, STEPS, 1.0, run_id=RUN_ID)
        return LedgerEntry(**fields, epsilon=1.0, timestamp="2026-01-01T00:00:00+00:00",
                           prev_hash=GENESIS).to_json()

    content = RecordDict({"fedssl": ConfigRecord({"ledger": [
        entry("partition-0"), entry("partition-1"), entry(FEDERATION_NODE)]})})
    carried = reply_ledger(content)
    assert [e.node_id for e in ledger_entries(carried, "partition-0")] == ["partition-0"]
    assert ledger_entries(carried, FEDERATION_NODE) == []


# ------------------------------------------------ report wording: true of the run (issue 18 §7)


def _privacy(tmp_path: Path, sigma: float, noise: str = SECRET_NOISE,
             config: RunConfig | None = None) -> dict:
    """The privacy section of a one-node, one-round run spent at noise multiplier `sigma`."""
    run = PrivacyLedger.open(tmp_path / f"run-{sigma}-{noise}.sqlite", owner="run")
    node = PrivacyLedger.open(tmp_path / f"node-{sigma}-{noise}.sqlite", owner="partition-0")
    event = ledger_event(1, "partition-0", RECORD_LEVEL, sigma, RATE, STEPS, 0.0, run_id=RUN_ID)
    append_spend(node, [], {**event, "noise": noise})
    run.add_many(node.run_entries("partition-0", RUN_ID))
    coverage = LedgerCoverage(run_id=RUN_ID)
    coverage.sending({1}, 1)
    coverage.replied(1, "partition-0", 1, spent=True)
    return privacy_section(run, coverage, config or RunConfig(), {RUN_ID}, {}, 0)


def test_a_node_that_ends_above_the_target_is_named_in_the_summary_and_report(tmp_path: Path):
    """σ = 0.3 for one round spends ε ≈ 19 > target-epsilon 8 (σ calibrated, `auto`): said in
    summary.json's `above_target` and in report.md. With a fixed σ the target is no cap."""
    above = _privacy(tmp_path, 0.3)
    (node,) = above["clients"]
    assert node["epsilon"] > above["target_epsilon"] == 8.0
    assert above["above_target"] == ["partition-0"]
    assert ("Nodes that ended above target-epsilon 8 (earlier lifetime spend): partition-0."
            in privacy_markdown(above))
    within = _privacy(tmp_path, 1.1)
    assert within["clients"][0]["epsilon"] < 8.0 and within["above_target"] == []
    assert "above target-epsilon" not in privacy_markdown(within)
    fixed = _privacy(tmp_path / "fixed", 0.3, config=RunConfig(noise_multiplier="0.3"))
    assert fixed["target_epsilon"] is None and fixed["above_target"] == []


def _labels(summary: dict) -> dict[str, str]:
    return dict(summary["arms"])


DOWNSTREAM = {"arms": [["finetuned", federated_label("finetuned")], ["baseline", "scratch"],
                       ["probe", federated_label("probe")], ["pruned", "pruned"]],
              "labels": {"labels_used": 10, "classes_in_labeled_set": 2,
                         "classes_in_test_set": 2, "test_records": 100},
              **{arm: {"accuracy": 0.5, "macro_f1": 0.5, "sparsity": 0.5} for arm in
                 ("finetuned", "baseline", "probe", "pruned")}}


def test_the_federated_arms_say_the_privacy_the_run_had(tmp_path: Path):
    def labels(privacy: dict) -> dict[str, str]:
        return _labels(build_summary(RunConfig(), DOWNSTREAM, privacy, 1, 1.0, {RUN_ID}))

    noisy = _privacy(tmp_path, SIGMA)
    expected = f"federated, DP ε={noisy['max_epsilon']:.3g}"
    assert labels(noisy)["finetuned"] == f"SSL pretrained ({expected}) + fine-tune"
    assert labels(noisy)["probe"] == f"SSL encoder ({expected}), linear probe"
    assert labels(noisy)["baseline"] == "scratch"

    free = _privacy(tmp_path, 0.0)  # noise-multiplier = 0: ε = ∞
    assert math.isinf(free["max_epsilon"]) and free["dp_guarantee"]
    assert labels(free)["finetuned"] == "SSL pretrained (federated, no DP noise) + fine-tune"
    seeded = _privacy(tmp_path, SIGMA, SEEDED_NOISE)  # reproducible-noise: no guarantee
    assert labels(seeded)["probe"] == ("SSL encoder (federated, NO DP guarantee: reproducible "
                                       "noise), linear probe")
    for privacy in (free, seeded):
        assert "DP ε=" not in str(labels(privacy))
    assert privacy_tag({**noisy, "max_epsilon_lower_bound": True}).startswith(
        "federated, DP ε≥")
    assert privacy_tag({**noisy, "clients": [], "unknown_nodes": []}) == "no federated training"


def test_the_class_balance_sentence_states_the_numbers_of_the_test_split(tmp_path: Path):
    privacy = _privacy(tmp_path, SIGMA)
    reports = {}
    for name, test_labels in (("balanced", [0, 1, 2, 3] * 25),
                              ("imbalanced", [0] * 80 + [1] * 15 + [2] * 5)):
        labels = {**DOWNSTREAM["labels"], "classes_in_test_set": len(set(test_labels)),
                  **class_balance(np.array(test_labels))}
        summary = build_summary(RunConfig(), {**DOWNSTREAM, "labels": labels}, privacy, 1, 1.0,
                                {RUN_ID})
        write_reports(tmp_path, summary)
        reports[name] = (tmp_path / "report.md").read_text()
    assert "imbalanced" not in reports["balanced"]
    assert ("The test classes are balanced (the largest class is 25% of the 100 test records, "
            "1.0× the smallest of 4 classes)") in reports["balanced"]
    assert ("The test classes are imbalanced (the largest class is 80% of the 100 test "
            "records, 16.0× the smallest of 3 classes), so macro-F1 is the headline number"
            ) in reports["imbalanced"]
    assert "very imbalanced" not in reports["imbalanced"]


PUBLIC_ARMS = [["finetuned", "SSL + fine-tune"], ["baseline", "scratch"], ["tfidf", "TF-IDF"],
               ["probe", "SSL probe"], ["probe_random", "random probe"],
               ["public", "public + fine-tune"], ["public_probe", "public probe"],
               ["pruned", "pruned"]]


def test_with_init_the_verdict_names_the_gain_over_the_baselines_and_over_public():
    f1 = {"finetuned": 0.50, "baseline": 0.30, "tfidf": 0.41, "probe": 0.45,
          "probe_random": 0.20, "public": 0.47, "public_probe": 0.48, "pruned": 0.9}
    summary = {"arms": PUBLIC_ARMS, **{a: {"accuracy": 0.5, "macro_f1": v} for a, v in f1.items()}}
    verdict = pretraining_verdict(summary)
    # The public arms are the control, not a baseline: the best baseline is TF-IDF.
    # The lead is stated as the adapted public encoder's, not as pretraining's.
    assert verdict.startswith("The adapted public encoder leads in this run: SSL + fine-tune "
                              "is +0.090 macro-F1 over the best baseline (TF-IDF;")
    assert ("Over the public encoder alone (public probe, macro-F1 0.480), the federated "
            "adaptation on the private records (SSL + fine-tune) added +0.020 macro-F1."
            ) in verdict
    worse = {**summary, "finetuned": {"accuracy": 0.5, "macro_f1": 0.46}}
    assert "(SSL + fine-tune) added nothing (-0.020) macro-F1" in pretraining_verdict(worse)
    lost = {**summary, "finetuned": {"accuracy": 0.5, "macro_f1": 0.40},
            "probe": {"accuracy": 0.5, "macro_f1": 0.39}}
    verdict = pretraining_verdict(lost)
    assert verdict.startswith("Pretraining did not pay in this run: the best baseline (TF-IDF, "
                              "macro-F1 0.410) leads")
    assert "added nothing (-0.080)" in verdict
