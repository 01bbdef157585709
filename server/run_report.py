"""summary.json and report.md: the run's results, machine-readable and as a readable table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common.run_config import RunConfig
from common.run_layout import REPORT_FILE, SUMMARY_FILE
from server.atomic_json import write_json
from server.evaluation.arm_labels import relabel_arms


def build_summary(
    config: RunConfig,
    downstream: dict[str, Any],
    privacy: dict[str, Any],
    rounds_done: int,
    wall_seconds: float,
    run_ids: set[str],
    rounds_trained: int | None = None,
) -> dict[str, Any]:
    """The summary document (docs/run-dir.md); `privacy` comes from the ledger
    (server/privacy_summary.py)."""
    summary: dict[str, Any] = {arm: downstream[arm] for arm, _ in downstream["arms"]}
    # [key, label] in report order; the federated arms' labels say the run's privacy
    summary["arms"] = relabel_arms(downstream["arms"], privacy)
    summary.update(
        {
            "privacy": privacy,
            "task": config.task,
            "rounds": rounds_done,
            "rounds_trained": rounds_done if rounds_trained is None else rounds_trained,
            "clients": config.num_clients,
            "run_ids": sorted(run_ids),
            "labels_used": downstream["labels"]["labels_used"],
            "labels": downstream["labels"],
            "wall_seconds": round(wall_seconds, 1),
        }
    )
    return summary


def epsilon_text(privacy: dict[str, Any]) -> str:
    """The headline: 'max record-level ε 7.998 at δ=1e-05 (replace-one, PLD)', with ≥ and
    the no-guarantee stamp where they apply (the console and the report use it)."""
    bound = "≥ " if privacy["max_epsilon_lower_bound"] else ""
    text = (f"max record-level ε {bound}{privacy['max_epsilon']:.3f} at δ={privacy['delta']:g} "
            f"({privacy['relation']} neighbours, {privacy['accountant'].upper()})")
    if not privacy["dp_guarantee"]:
        text += f" — {privacy['noise']}"
    return text


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
PUBLIC = ("public", "public_probe")  # the public checkpoint without federated adaptation


def pretraining_verdict(summary: dict[str, Any]) -> str:
    """One sentence: did the federated pretraining beat every baseline of this run?

    Baselines are scratch, the classical model and the random-init probe. With a public
    checkpoint (`init`) the public arms are not baselines but the control: a second sentence
    names the gain of the federated arm over the better public arm. One run is one seed: the
    sentence says so, and points to the sweep for spread over seeds.
    """
    labels = dict(summary.get("arms", []))
    pretrained = [a for a in PRETRAINED if a in labels]
    baselines = [a for a in labels if a not in (*PRETRAINED, *PUBLIC, "pruned")]
    if not pretrained or not baselines:
        return ""
    best = max(pretrained, key=lambda a: summary[a]["macro_f1"])
    rival = max(baselines, key=lambda a: summary[a]["macro_f1"])
    margin = summary[best]["macro_f1"] - summary[rival]["macro_f1"]
    public = [a for a in PUBLIC if a in labels]
    over_public = ""
    if public:
        control = max(public, key=lambda a: summary[a]["macro_f1"])
        gain = summary[best]["macro_f1"] - summary[control]["macro_f1"]
        added = f"added {gain:+.3f}" if gain > 0 else f"added nothing ({gain:+.3f})"
        over_public = (f" Over the public encoder alone ({labels[control]}, macro-F1 "
                       f"{summary[control]['macro_f1']:.3f}), the federated adaptation on the "
                       f"private records ({labels[best]}) {added} macro-F1.")
    if public and margin > 0:  # the lead may be the public model's: the next sentence says
        return (f"The adapted public encoder leads in this run: {labels[best]} is "
                f"{margin:+.3f} macro-F1 over the best baseline ({labels[rival]}; one seed, "
                f"`fedssl sweep` measures the spread).{over_public}")
    if margin > 0:
        return (f"Pretraining paid in this run: {labels[best]} leads the best baseline "
                f"({labels[rival]}) by {margin:+.3f} macro-F1 (one seed; `fedssl sweep` "
                f"measures the spread).{over_public}")
    return (f"Pretraining did not pay in this run: the best baseline ({labels[rival]}, "
            f"macro-F1 {summary[rival]['macro_f1']:.3f}) leads; the best pretrained arm "
            f"({labels[best]}) is {margin:+.3f} behind.{over_public} docs/label-efficiency.md "
            "shows where federated DP pretraining pays and where it does not.")


def write_reports(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json and report.md into RUN_DIR."""
    write_json(run_dir / SUMMARY_FILE, summary)
    labels = summary["labels"]
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
cannot be predicted and counts as F1 = 0. {class_balance_text(labels)}

{privacy_markdown(summary["privacy"])}"""
    (run_dir / REPORT_FILE).write_text(text)


# Largest / smallest test class count at and above which the report calls the classes
# imbalanced: past 3x, accuracy and macro-F1 can rank arms differently.
IMBALANCED_RATIO = 3.0
BALANCED_RATIO = 1.5


def class_balance_text(labels: dict[str, Any]) -> str:
    """What the test split's class counts are, in numbers, and so which metric leads."""
    ratio, share = labels.get("class_count_ratio"), labels.get("largest_class_share")
    if ratio is None or share is None or not labels.get("classes_in_test_set"):
        return "Macro-F1 is the headline number."
    counts = (f"the largest class is {share:.0%} of the {labels['test_records']:,} test records, "
              f"{ratio:.1f}× the smallest of {labels['classes_in_test_set']} classes")
    if ratio >= IMBALANCED_RATIO:
        return (f"The test classes are imbalanced ({counts}), so macro-F1 is the headline "
                "number; accuracy mostly reflects the largest classes.")
    if ratio >= BALANCED_RATIO:
        return (f"The test classes are moderately uneven ({counts}); macro-F1 is the headline "
                "number, accuracy leans towards the larger classes.")
    return (f"The test classes are balanced ({counts}), so accuracy and macro-F1 tell much "
            "the same story; macro-F1 stays the headline number.")


def privacy_markdown(privacy: dict[str, Any]) -> str:
    """report.md's privacy section: every number from the ledger, each ε with its own δ."""
    stamp = "" if privacy["dp_guarantee"] else f"\n**{privacy['noise']}.**\n"
    rows = "\n".join(
        f"| {c['node']} | {c['num_examples'] if c['num_examples'] is not None else '-'} "
        f"| {c['noise_multiplier']:.4f} | {c['sample_rate']:.5f} | {c['run_steps']} "
        f"| {'≥ ' if c['lower_bound'] else ''}{c['epsilon']:.3f} | {c['delta']:g} "
        f"| {_number(c['epsilon_at_run_delta'])} | {c['run_epsilon']:.3f} "
        f"| {c['max_epsilon'] or '-'} | {'; '.join(c['notes']) or ''} |"
        for c in privacy["clients"])
    unknown = "".join(f"\n- {u['node']}: sampled, but the server never saw its ledger "
                      f"({u['reason']}); its own ledger holds its spend"
                      for u in privacy["unknown_nodes"])
    above = (f"\nNodes that ended above target-epsilon {privacy['target_epsilon']:g} (earlier "
             f"lifetime spend): {', '.join(privacy['above_target'])}."
             if privacy["above_target"] else "")
    loss = ("Each node's raw training loss was released (`release-train-loss`, a simulation "
            "switch): it is not covered by the guarantee." if privacy["train_loss_released"]
            else "Nodes kept their training loss to themselves.")
    return f"""## Privacy
{stamp}
Guarantee: **{privacy['guarantee']}**, for **{privacy['relation']}** neighbours: each node \
releases its record count, so n is public and neighbouring data sets differ in one record's \
content. It protects one record at one node, also against the server (DP noise and Poisson \
masks come from a secret source on the node: {privacy['noise']}). Accountant: \
{privacy['accountant'].upper()} (dp-accounting, pessimistic). Per-record clip norm \
{privacy['clip_norm']}, noise multiplier {privacy['noise_multiplier']} (target ε \
{privacy['target_epsilon']}). Every number below comes from the privacy ledger, not from \
client metrics.

**{epsilon_text(privacy)}.** {_client_level_text(privacy)} Budget refusals this run: \
{privacy['budget_refusals']}. {loss}{above}

ε is each node's claim for its whole lifetime (every run in its ledger), at the node's own δ; \
"ε at run δ" puts every node at the run's δ = {privacy['delta']:g} for comparison, and "this \
run" counts only this run's DP-SGD steps. "≥" marks a node whose latest spend the server may \
not have seen.

| node | records | σ | q | steps this run | ε (own δ) | δ | ε at run δ | ε this run \
| budget | notes |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}
{unknown}
Every spend above is in the privacy ledger `{privacy['ledger']['file']}` \
({privacy['ledger']['rows']} entries, head `{privacy['ledger']['head'][:16]}…`). Verify it and \
recompute every ε independently with `fedssl audit RUN_DIR`.
"""


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"  # NaN: not recomputable


def _client_level_text(privacy: dict[str, Any]) -> str:
    level = privacy["client_level"]
    if level is None:
        secure = privacy.get("secure_aggregation")
        return "Client-level DP (noise on the aggregate): not used in this run." + (
            "" if secure is None
            else f" Secure aggregation ({secure['protocol']}): {secure['statement']}")
    return (f"Client-level DP for the federation ({level['guarantee']}, "
            f"{level['sampling']} client sampling, z = {level['noise_multiplier']}): "
            f"ε = {level['epsilon']:.3f} at δ = {level['delta']:g} ({level['relation']} "
            f"client, {level['accountant'].upper()}); it protects a whole client's "
            f"participation against whoever sees the aggregate{_against_server(privacy)}")


def _against_server(privacy: dict[str, Any]) -> str:
    """How far the client-level claim reaches: only with secure aggregation and distributed
    noise can it hold against the server (server/privacy_summary.py says when)."""
    secure = privacy.get("secure_aggregation")
    if secure is None:
        return ", not against the server."
    return (". Secure aggregation (" + secure["protocol"] + "): " + secure["statement"])
