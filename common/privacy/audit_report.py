"""How an audit is shown: Markdown (audit.md), a plain-text table, a JSON document, a plot.

Every number is printed next to its guarantee, δ and accountant; record-level and client-level
results are always in separate tables and separate plot panels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any

from common.privacy.ledger import FEDERATION_NODE, RECORD_LEVEL
from common.privacy.ledger_audit import ACCOUNTANTS, AuditReport, NodeAudit, Problem

MARKDOWN_FILE = "audit.md"
PLOT_FILE = "epsilon.png"
_HEADERS = ["node", "events", "steps", "rounds", "δ", "claimed ε", "ε PLD", "ε RDP bound",
            "budget", "crashed", "status"]
_LEGEND_MAX_NODES = 12  # beyond this a per-node legend hides the plot


def verdict_line(report: AuditReport) -> str:
    """One line: PASS or FAIL and why, in words (NO DP GUARANTEE first when it applies)."""
    if report.ok:
        return ("PASS: the ledger is intact and complete, every claimed ε matches its "
                "recomputation and is at least the PLD ε for the relation that holds, the "
                "noise was secret, and every node is within its budget")
    head = "FAIL: NO DP GUARANTEE (reproducible noise); " if not report.guaranteed else "FAIL: "
    return f"{head}{len(report.reasons)} problem(s); the first: {report.reasons[0]}"


def text_report(report: AuditReport) -> str:
    """What `fedssl audit` prints: header lines, one table per guarantee, the verdict."""
    lines = [f"ledger  {report.ledger_path} (owner '{report.owner}', {report.rows} rows)",
             f"chains  {_integrity_line(report)}", f"anchor  {_anchor_line(report)}",
             f"run     {_run_line(report)}", f"delta   {_delta_line(report)}", ""]
    for label, nodes in _sections(report):
        lines.append(f"{label} — {_accountant_line(nodes)}")
        lines += _plain_table(_HEADERS, [_cells(n) for n in nodes])
        lines.append("")
    lines += [f"note: {n}" for n in report.notes]
    lines.append(verdict_line(report))
    return "\n".join(lines)


def markdown_report(report: AuditReport, plot_name: str = PLOT_FILE) -> str:
    """audit.md: verdict, integrity, per-guarantee tables, notes and the plot."""
    out = [f"# Privacy audit: {'PASS' if report.ok else 'FAIL'}", "",
           f"- Ledger: `{report.ledger_path}` (owner `{report.owner}`, {report.rows} rows, "
           + f"head `{report.head[:16]}…`)",
           f"- Anchor: {_anchor_line(report)}",
           f"- RUN_DIR cross-checks: {_run_line(report)}",
           f"- δ: {_delta_line(report)}",
           f"- claimed ε: {ACCOUNTANTS['claimed']}",
           f"- ε PLD: {ACCOUNTANTS['pld']}",
           f"- ε RDP bound: {ACCOUNTANTS['rdp']}", "", "## Verdict", "",
           verdict_line(report), ""]
    out += [f"{i}. {reason}" for i, reason in enumerate(report.reasons, 1)]
    out += ["", "## Integrity", "", _integrity_line(report), ""]
    out += [f"- `{p.check}`: {p.message}" for p in (*report.chain_problems,
                                                     *report.anchor_problems,
                                                     *report.run_problems)]
    for label, nodes in _sections(report):
        out += ["", f"## {label[0].upper()}{label[1:]}", "",
                f"Guarantee: {label}. Accountants: {_accountant_line(nodes)}.", "",
                "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
        out += ["| " + " | ".join(_cells(n)) + " |" for n in nodes]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    out += ["", "## ε over rounds", "",
            "PLD solid, RDP bound dashed, budget dotted; one panel per guarantee.", "",
            f"![epsilon over rounds]({plot_name})", ""]
    return "\n".join(out)


def json_document(report: AuditReport, outputs: dict[str, str]) -> dict[str, Any]:
    """Everything, raw events included; non-finite numbers become "inf"/"nan" strings."""
    doc = {
        "ok": report.ok,
        "verdict": verdict_line(report),
        "reasons": report.reasons,
        "ledger": str(report.ledger_path),
        "summary": None if report.summary_path is None else str(report.summary_path),
        "owner": report.owner,
        "rows": report.rows,
        "head": report.head,
        "anchor": None if report.anchor is None else dict(report.anchor),
        "delta": report.delta,
        "delta_used": _delta_line(report),
        "accountants": ACCOUNTANTS,
        "integrity_problems": [_problem(p) for p in report.chain_problems],
        "anchor_problems": [_problem(p) for p in report.anchor_problems],
        "run_problems": [_problem(p) for p in report.run_problems],
        "anchor_source": report.anchor_source,
        "dp_guarantee": report.guaranteed,
        "notes": list(report.notes),
        "nodes": [_node_document(n, report.delta) for n in report.nodes],
        "outputs": outputs,
    }
    return _finite(doc)


def plot_epsilon(report: AuditReport, path: Path) -> None:
    """PNG of cumulative ε per node: one panel per guarantee (never mixed on one axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    sections = _sections(report) or [("no privacy-consuming events", [])]
    figure = Figure(figsize=(6.5 * len(sections), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_round = all(_rounds_ascending(n) for n in report.nodes)
    for axes, (label, nodes) in zip(figure.subplots(1, len(sections), squeeze=False)[0],
                                    sections, strict=True):
        for index, node in enumerate(nodes):
            color = f"C{index % 10}"
            xs = ([e.row.entry.round for e in node.events] if by_round
                  else list(range(1, len(node.events) + 1)))
            axes.plot(xs, [_plottable(e.epsilon_pld) for e in node.events], "-o", color=color,
                      markersize=3, label=node.node_id)
            axes.plot(xs, [_plottable(e.epsilon_rdp) for e in node.events], "--", color=color)
            if node.budget is not None:
                axes.axhline(node.budget, linestyle=":", color=color)
        deltas = sorted({f"{n.delta:g}" for n in nodes})
        axes.set_title(f"{label}\nδ={', '.join(deltas) or '-'}; PLD solid, RDP bound "
                       "dashed, budget dotted", fontsize=9)
        axes.set_xlabel("round" if by_round else "event number (rounds restart across runs)")
        axes.set_ylabel("cumulative ε")
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if nodes and len(nodes) <= _LEGEND_MAX_NODES:
            axes.legend(fontsize=7)
    figure.savefig(path, dpi=110)


def _sections(report: AuditReport) -> list[tuple[str, list[NodeAudit]]]:
    """Nodes grouped by guarantee label; record-level first."""
    groups: dict[str, list[NodeAudit]] = {}
    def order(node: NodeAudit) -> tuple[bool, str, list[int | str]]:
        # Natural order of node ids: partition-2 before partition-10.
        parts = re.split(r"(\d+)", node.node_id)
        return node.guarantee != RECORD_LEVEL, node.label, [
            int(p) if p.isdigit() else p for p in parts]

    for node in sorted(report.nodes, key=order):
        groups.setdefault(node.label, []).append(node)
    return list(groups.items())


def _cells(node: NodeAudit) -> list[str]:
    rounds = node.rounds
    span = f"{rounds[0]}–{rounds[-1]} ({len(rounds)})" if rounds else "-"
    delta = f"{node.delta:g}" if node.delta == node.claim_delta else (
        f"{node.delta:g} (claims at {node.claim_delta:g})")
    return [node.node_id, str(len(node.events)), str(node.total_steps), span, delta,
            _number(node.claimed_epsilon), _number(node.epsilon_pld), _number(node.epsilon_rdp),
            "none" if node.budget is None else f"{node.budget:g}", _crashed_cell(node),
            node.status]


def _crashed_cell(node: NodeAudit) -> str:
    """Unconfirmed write-ahead entries: '0', 'rounds 2, 5 (over-counted)', 'legacy' or '-'."""
    if node.guarantee != RECORD_LEVEL or node.node_id == FEDERATION_NODE:
        return "-"  # written in one step after the release: nothing to confirm
    if node.legacy:
        return "legacy"
    if not node.crashed_rounds:
        return "0"
    return ("round" + ("s " if len(node.crashed_rounds) > 1 else " ")
            + ", ".join(str(r.entry.round) for r in node.crashed_rounds) + " (over-counted)")


def _accountant_line(nodes: list[NodeAudit]) -> str:
    steps = "DP-SGD steps" if all(n.guarantee == RECORD_LEVEL for n in nodes) else "rounds"
    relations = sorted({n.relation for n in nodes})
    return (f"neighbours: {', '.join(relations)}; claimed ε: the entries' own accountant "
            "(PLD); ε PLD: dp-accounting at discretization 1e-4; ε RDP bound: independent; "
            f"steps = {steps}; ε is cumulative over all events shown")


def _integrity_line(report: AuditReport) -> str:
    if not report.chain_problems:
        return f"intact: entry and row hash chains verified over {report.rows} rows"
    first = report.chain_problems[0]
    return f"BROKEN ({len(report.chain_problems)} problem(s)); first broken entry: {first}"


def _anchor_line(report: AuditReport) -> str:
    if report.anchor_problems:
        return "PROBLEM: " + "; ".join(str(p) for p in report.anchor_problems)
    if report.anchor is None:
        return "none (a node's own ledger: a cut-off tail cannot be detected)"
    return f"matches {report.anchor_source} ({report.anchor.get('rows')} rows)"


def _run_line(report: AuditReport) -> str:
    if report.owner != "run":
        return "- (a node's own ledger)"
    if report.run_problems:
        return (f"{len(report.run_problems)} problem(s); first: {report.run_problems[0]}")
    return "config, metrics and simulated node ledgers agree with the run's ledger"


def _delta_line(report: AuditReport) -> str:
    if report.delta is None:
        return "each entry's own δ (the δ the node claims and is budgeted at)"
    return (f"{report.delta:g} for ε RDP and ε PLD; claims and budgets are still checked at "
            "each entry's own δ")


def _plain_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    return [line.rstrip() for line in lines + [fmt.format(*r) for r in rows]]


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}"


def _plottable(value: float) -> float:
    return value if math.isfinite(value) else math.nan  # matplotlib cannot draw infinity


def _rounds_ascending(node: NodeAudit) -> bool:
    rounds = [e.row.entry.round for e in node.events]
    return all(a <= b for a, b in itertools.pairwise(rounds))


def _problem(problem: Problem) -> dict[str, Any]:
    return dataclasses.asdict(problem)


def _node_document(node: NodeAudit, delta: float | None) -> dict[str, Any]:
    events = []
    open_seqs = {r.seq for r in node.unconfirmed}
    for event in node.events:
        raw = dataclasses.asdict(event.row.entry)
        events.append({"seq": event.row.seq, **raw, "confirmed": event.row.seq not in open_seqs,
                       "row_prev": event.row.row_prev,
                       "row_hash": event.row.row_hash,
                       "recomputed": {"delta": event.row.entry.delta if delta is None
                                      else delta,
                                      "relation": node.relation,
                                      "epsilon_rdp_bound": event.epsilon_rdp,
                                      "epsilon_pld": event.epsilon_pld,
                                      "claim_at_entry_delta": event.recomputed_claim,
                                      "claim_consistent": event.claim_consistent,
                                      "claim_covers_pld": event.claim_covers}})
    return {"node_id": node.node_id, "guarantee": node.guarantee, "label": node.label,
            "status": node.status, "ok": node.ok, "reasons": list(node.reasons),
            "events_count": len(node.events), "total_steps": node.total_steps,
            "rounds": list(node.rounds), "delta": node.delta, "claim_delta": node.claim_delta,
            "relation": node.relation, "dp_guarantee": node.guaranteed,
            "withheld_earlier_spend": node.withheld,
            "claimed_epsilon": node.claimed_epsilon, "epsilon_rdp_bound": node.epsilon_rdp,
            "epsilon_pld": node.epsilon_pld, "budget": node.budget,
            "confirmations": node.confirmations, "legacy": node.legacy,
            "crashed_rounds": [{"seq": r.seq, "run_id": r.entry.run_id, "round": r.entry.round,
                                "counted": "in full (an over-count, never an under-count)"}
                               for r in node.crashed_rounds],
            "events": events}


def _finite(value: Any) -> Any:
    """Strict JSON has no Infinity/NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
