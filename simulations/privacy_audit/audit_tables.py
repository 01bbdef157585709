"""The empirical audit's results as a Markdown table and a JSON document."""

from __future__ import annotations

from typing import Any

from simulations.privacy_audit.empirical_audit import (
    AuditSettings,
    TrialResult,
    k_grid,
    resolvable_epsilon,
)
from simulations.privacy_audit.planted_bugs import warning_line


def json_document(settings: AuditSettings, results: list[TrialResult]) -> dict[str, Any]:
    """Everything needed to recheck each bound: claim, counts, guesses, per score."""
    return {
        "bug": settings.bug.value,
        "warning": warning_line(settings.bug),
        "task": settings.config.task,
        "canaries": settings.canaries,
        "beta": settings.beta,
        "beta_per_score": settings.beta / len(settings.scores),
        "k_grid": k_grid(settings.canaries),
        "resolvable_epsilon": _ceiling(settings, results),
        "trials": [{
            "claimed_epsilon": r.claimed_epsilon, "delta": r.delta,
            "relation": "replace-one", "noise_multiplier": r.noise_multiplier,
            "sample_rate": r.sample_rate, "steps_per_round": r.steps_per_round,
            "rounds": r.rounds, "num_records": r.num_records, "included": r.included,
            "lower_bound": r.lower_bound, "refutes_claim": r.refutes_claim,
            "seconds": round(r.seconds, 1),
            "scores": {b.score: {"epsilon": b.epsilon, "k_pos": b.k_pos, "k_neg": b.k_neg,
                                 "guesses": b.guesses, "correct": b.correct}
                       for b in r.bounds},
        } for r in results],
    }


def markdown_table(settings: AuditSettings, results: list[TrialResult]) -> str:
    """One row per trial and score, with the claim beside the measured lower bound."""
    lines = []
    if warning := warning_line(settings.bug):
        lines += [f"**{warning}**", ""]
    first = results[0]
    lines += [
        (f"Empirical privacy audit (one run, Steinke-Nasr-Jagielski 2023): task "
        f"{settings.config.task}, m={settings.canaries} canaries, β={settings.beta:g} "
        f"(β/{len(settings.scores)} per score, each over {len(k_grid(settings.canaries))} (k+, k-) "
        f"pairs), bug: {settings.bug.value}. Claim: the node's record-level ε at "
        f"δ={first.delta:g} (replace-one), σ={first.noise_multiplier:.3f}, "
        f"q={first.sample_rate:.4f}, {first.steps_per_round} steps × {first.rounds} rounds, "
        f"n={first.num_records}. No bound can exceed {_ceiling(settings, results):.2f} with "
        f"{settings.canaries} canaries (every guess right)."),
        "",
        ("| trial | claimed ε | score | lower bound | k+ | k- | guesses | correct | "
        "bound > claim |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, result in enumerate(results, 1):
        for bound in result.bounds:
            lines.append(
                f"| {index} | {result.claimed_epsilon:.3f} | {bound.score} | "
                f"{bound.epsilon:.3f} | {bound.k_pos} | {bound.k_neg} | {bound.guesses} | "
                f"{bound.correct} | {'YES' if bound.epsilon > result.claimed_epsilon else 'no'}"
                " |")
    refuted = sum(r.refutes_claim for r in results)
    lines += ["", (f"Trials whose lower bound (the largest of the {len(settings.scores)} scores) exceeds "
              f"the claim: {refuted}/{len(results)}. A bound above the claim proves the "
              "mechanism is not what the accountant assumes; a bound below it proves "
              "nothing about the claim (docs/privacy-audit.md)."), ""]
    return "\n".join(lines)


def _ceiling(settings: AuditSettings, results: list[TrialResult]) -> float:
    """The largest bound these canaries can give at all, per score (see resolvable_epsilon)."""
    return resolvable_epsilon(settings.canaries, results[0].delta,
                              settings.beta / len(settings.scores))
