"""summary.json and report.md: the run's results, machine-readable and as a readable table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.privacy_accounting import ACCOUNTANT
from common.run_config import RunConfig
from server.run_directory import write_json


def build_summary(
    config: RunConfig,
    downstream: dict[str, Any],
    per_client_epsilon: dict[str, float],
    per_client_privacy: list[dict[str, float | int | str]],
    rounds_done: int,
    wall_seconds: float,
    ledger_head: dict[str, Any],
    client_level_epsilon: float | None,
    refusals: int,
) -> dict[str, Any]:
    """The summary document (see README, "RUN_DIR layout")."""
    summary: dict[str, Any] = {arm: downstream[arm] for arm, _ in downstream["arms"]}
    summary["arms"] = downstream["arms"]  # [key, label] in report order
    summary.update(
        {
            "privacy": {
                "guarantee": "record-level DP per client (Opacus DP-SGD, Poisson sampling)",
                "accountant": ACCOUNTANT,
                "delta": config.delta,
                "max_epsilon": max(per_client_epsilon.values(), default=0.0),
                "per_client": per_client_epsilon,
                "clients": per_client_privacy,
                "target_epsilon": config.target_epsilon
                if config.fixed_noise_multiplier is None else None,
                "noise_multiplier": config.noise_multiplier,
                "clip_norm": config.clip_norm,
                "budget_refusals": refusals,
                "client_level": None if client_level_epsilon is None else {
                    "guarantee": "client-level DP for the federation (DP-FedAvg)",
                    "epsilon": client_level_epsilon,
                    "delta": config.delta,
                    "accountant": ACCOUNTANT,
                    "noise_multiplier": config.client_noise_multiplier,
                    "sampling": config.client_sampling,
                },
                "ledger": {"file": "ledger.sqlite", **ledger_head},
            },
            "task": config.task,
            "rounds": rounds_done,
            "clients": config.num_clients,
            "labels_used": downstream["labels"]["labels_used"],
            "labels": downstream["labels"],
            "wall_seconds": round(wall_seconds, 1),
        }
    )
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (also what `fedssl simulate` prints at the end)."""
    rows = ["| arm | accuracy | macro-F1 |", "|---|---|---|"]
    for arm, label in summary["arms"]:
        result = summary[arm]
        extra = f" (sparsity {result['sparsity']:.0%})" if arm == "pruned" else ""
        rows.append(f"| {label}{extra} | {result['accuracy']:.3f} | {result['macro_f1']:.3f} |")
    verdict = pretraining_verdict(summary)
    return "\n".join(rows) + (f"\n\n{verdict}" if verdict else "")


PRETRAINED = ("finetuned", "probe")  # arms that start from the federated model (pruned: derived)


def pretraining_verdict(summary: dict[str, Any]) -> str:
    """One sentence: did the federated pretraining beat every baseline of this run?

    Baselines are scratch, the classical model and the random-init probe. One run is one
    seed: the sentence says so, and points to the sweep for spread over seeds.
    """
    labels = dict(summary.get("arms", []))
    pretrained = [a for a in PRETRAINED if a in labels]
    baselines = [a for a in labels if a not in (*PRETRAINED, "pruned")]
    if not pretrained or not baselines:
        return ""
    best = max(pretrained, key=lambda a: summary[a]["macro_f1"])
    rival = max(baselines, key=lambda a: summary[a]["macro_f1"])
    margin = summary[best]["macro_f1"] - summary[rival]["macro_f1"]
    if margin > 0:
        return (f"Pretraining paid in this run: {labels[best]} leads the best baseline "
                f"({labels[rival]}) by {margin:+.3f} macro-F1 (one seed; `fedssl sweep` "
                "measures the spread).")
    return (f"Pretraining did not pay in this run: the best arm is a baseline ({labels[rival]}, "
            f"macro-F1 {summary[rival]['macro_f1']:.3f}); the best pretrained arm "
            f"({labels[best]}) is {margin:+.3f} behind. docs/label-efficiency.md shows where "
            "federated DP pretraining pays and where it does not.")


def write_reports(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json and report.md into RUN_DIR."""
    write_json(run_dir / "summary.json", summary)
    privacy = summary["privacy"]
    labels = summary["labels"]
    per_client = "\n".join(
        f"| {c['node']} | {c.get('partition_id', '-')} | {c['num_examples']} "
        f"| {c['noise_multiplier']:.4f} | {c['sample_rate']:.5f} | {c['total_steps']} "
        f"| {c['epsilon']:.3f} | {c.get('max_epsilon') or '-'} |"
        for c in privacy["clients"]
    )
    downstream = f"then central fine-tuning on {labels['labels_used']} labels " \
        f"({labels['classes_in_labeled_set']} of {labels['classes_in_test_set']} test classes " \
        f"have at least one label), evaluated on {labels['test_records']} test records" \
        if summary["arms"] else "pretraining only (downstream = false)"
    text = f"""# fedssl run report

Task `{summary['task']}`: {summary['clients']} clients, {summary['rounds']} federated rounds, \
{downstream}. Wall time {summary['wall_seconds']:.0f} s.

## Downstream results (test split)

{summary_table(summary)}

Macro-F1 averages over the classes present in the test split; a class with no labeled example
cannot be predicted and counts as F1 = 0. The classes are very imbalanced, so macro-F1 is the
headline number; accuracy mostly reflects the largest class.

## Privacy

Guarantee: **{privacy['guarantee']}**. It protects one record at one client, also against \
the server. Accountant: {privacy['accountant'].upper()}, δ = {privacy['delta']:g}, per-record \
clip norm {privacy['clip_norm']}, noise multiplier {privacy['noise_multiplier']} \
(target ε {privacy['target_epsilon']}). ε is each node's cumulative spend over every run \
in its ledger (its whole lifetime, not only this run). {_client_level_text(privacy)} \
Budget refusals this run: {privacy['budget_refusals']}. \
Not covered by the guarantee: each client's reported record count and mean training loss \
(released beside the update, without noise).

Max ε over clients: **{privacy['max_epsilon']:.3f}**

| node | partition | records | σ | sample rate q | DP-SGD steps | ε | budget |
|---|---|---|---|---|---|---|---|
{per_client}

Every spend above is in the privacy ledger `{privacy['ledger']['file']}` \
({privacy['ledger']['rows']} entries, head `{privacy['ledger']['head'][:16]}…`). Verify it and \
recompute every ε independently with `fedssl audit RUN_DIR`.
"""
    (run_dir / "report.md").write_text(text)


def _client_level_text(privacy: dict[str, Any]) -> str:
    level = privacy["client_level"]
    if level is None:
        return "Client-level DP (noise on the aggregate): not used in this run."
    return (f"Client-level DP for the federation ({level['guarantee']}, "
            f"{level['sampling']} client sampling, z = {level['noise_multiplier']}): "
            f"ε = {level['epsilon']:.3f} at δ = {level['delta']:g} ({level['accountant'].upper()}"
            "); it protects a whole client's participation against whoever sees the aggregate, "
            "not against the server.")
