"""The run report's one-sentence verdict: did pretraining beat every baseline of the run?"""

from __future__ import annotations

from server.run_report import pretraining_verdict, summary_table

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
