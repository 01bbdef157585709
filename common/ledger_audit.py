"""Independent audit of a privacy ledger: is it intact, are its ε claims right, are budgets kept?

Pure functions over the rows of a ledger file (common/privacy_ledger.py); no Flower, no output.
This is the entry point (`audit`); the integrity checks live in common/ledger_integrity.py and
the ε recomputation in common/epsilon_curves.py, both re-exported here. Every node's ε is recomputed from its raw events with two accountants: Opacus's RDP accountant
(the one nodes claim with, so claims must match it) and dp-accounting's PLD accountant (an
independent implementation; typically tighter). Numbers are never mixed across guarantees:
record-level DP per client and client-level DP for the federation are separate results.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.epsilon_curves import ACCOUNTANTS, claim_consistent, pld_curve, rdp_curve
from common.ledger_integrity import Problem, check_anchor, verify_chain
from common.privacy_ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GENESIS,
    RECORD_LEVEL,
    LedgerError,
    LedgerRow,
    read_ledger,
    unconfirmed,
)

__all__ = [
    "ACCOUNTANTS", "AuditInputError", "AuditReport", "EventAudit", "NodeAudit", "Problem",
    "audit", "audit_node", "check_anchor", "claim_consistent", "guarantee_label", "pld_curve",
    "rdp_curve", "resolve_ledger", "verify_chain",
]

LEDGER_FILE = "ledger.sqlite"
SUMMARY_FILE = "summary.json"
BUDGET_TOLERANCE = 1e-9  # relative; a budget breach by float noise alone is not a breach


class AuditInputError(ValueError):
    """PATH cannot be audited: missing, not a ledger, corrupt, or a bad δ."""


@dataclass(frozen=True)
class EventAudit:
    """One ledger event with ε recomputed after it (cumulative for its node and guarantee)."""

    row: LedgerRow
    epsilon_rdp: float  # at the report δ
    epsilon_pld: float  # at the report δ
    recomputed_claim: float  # RDP at the entry's own δ: what the node should have claimed
    claim_consistent: bool


@dataclass(frozen=True)
class NodeAudit:
    """The verdict for one node and one guarantee."""

    node_id: str
    guarantee: str
    events: tuple[EventAudit, ...]
    delta: float  # δ of epsilon_rdp / epsilon_pld
    claim_delta: float  # δ of the last entry: the δ the node claims and is budgeted at
    claimed_epsilon: float
    epsilon_rdp: float
    epsilon_pld: float
    budget: float | None  # max_epsilon at the latest event; None = no budget
    status: str
    reasons: tuple[str, ...]
    # Write-ahead entries with no confirmation: crashed (or still running) rounds, counted in
    # full. `confirmations` = 0 means the ledger holds none for this node (see `legacy`).
    unconfirmed: tuple[LedgerRow, ...] = ()
    confirmations: int = 0

    @property
    def legacy(self) -> bool:
        """A node's record-level chain with no confirmation at all: written before fedssl
        confirmed rounds (or every round crashed); its entries cannot be told apart."""
        return (self.guarantee == RECORD_LEVEL and self.node_id != FEDERATION_NODE
                and self.confirmations == 0)

    @property
    def crashed_rounds(self) -> tuple[LedgerRow, ...]:
        """Unconfirmed entries of a node that does confirm: rounds that crashed mid-way."""
        return () if self.legacy else self.unconfirmed

    @property
    def ok(self) -> bool:
        """Consistent claims, valid events and within budget."""
        return not self.reasons

    @property
    def total_steps(self) -> int:
        """Mechanism invocations over all events (DP-SGD steps, or rounds at client level)."""
        return sum(e.row.entry.steps for e in self.events)

    @property
    def rounds(self) -> tuple[int, ...]:
        """Distinct rounds with an event, ascending."""
        return tuple(sorted({e.row.entry.round for e in self.events}))

    @property
    def label(self) -> str:
        """Which guarantee the numbers are, in words."""
        return guarantee_label(self.node_id, self.guarantee)


@dataclass(frozen=True)
class AuditReport:
    """Everything `fedssl audit` found about one ledger file."""

    ledger_path: Path
    summary_path: Path | None
    owner: str
    rows: int
    head: str
    anchor: Mapping[str, Any] | None
    delta: float | None  # --delta, or None for each entry's own δ
    chain_problems: tuple[Problem, ...]
    anchor_problems: tuple[Problem, ...]
    nodes: tuple[NodeAudit, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Intact, consistent and within budget."""
        return not self.reasons

    @property
    def reasons(self) -> list[str]:
        """Why the audit fails, first broken entry first (empty when it passes)."""
        return ([str(p) for p in (*self.chain_problems, *self.anchor_problems)]
                + [r for node in self.nodes for r in node.reasons])


def guarantee_label(node_id: str, guarantee: str) -> str:
    """'record-level DP, per client' or 'client-level DP, for the federation' (or a node)."""
    if guarantee == CLIENT_LEVEL:
        return ("client-level DP, for the federation" if node_id == FEDERATION_NODE
                else f"client-level DP, applied by node '{node_id}'")
    return "record-level DP, per client"


def audit_node(rows: Sequence[LedgerRow], delta: float | None = None) -> NodeAudit:
    """Recompute one node's ε for one guarantee from its rows (file order) and judge it.

    Claims and budgets are judged at each entry's own δ; `delta` only moves the reported ε.
    """
    entries = [r.entry for r in rows]
    node_id, guarantee = entries[0].node_id, entries[0].guarantee
    events = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    own = [e.delta for e in entries]
    claims = rdp_curve(events, own)
    report = own if delta is None else [delta] * len(entries)
    rdp = claims if delta is None else rdp_curve(events, report)
    pld = pld_curve(events, report)
    audits = tuple(EventAudit(r, a, b, c, claim_consistent(r.entry.epsilon, c))
                   for r, a, b, c in zip(rows, rdp, pld, claims, strict=True))
    who = f"node '{node_id}' ({guarantee_label(node_id, guarantee)})"
    reasons, status = [], []
    wrong = [e for e in audits if not e.claim_consistent]
    if wrong:
        first = wrong[0]
        kind = "under-claims" if first.row.entry.epsilon < first.recomputed_claim else "over-claims"
        reasons.append(
            f"{who} {kind}: it claimed ε={first.row.entry.epsilon:.6g} at round "
            f"{first.row.entry.round} (row {first.row.seq}, δ={first.row.entry.delta:g}, RDP) "
            f"but its events give ε={first.recomputed_claim:.6g}"
            + (f"; {len(wrong) - 1} more inconsistent claim(s)" if len(wrong) > 1 else ""))
        status.append("inconsistent claims")
    # Each event is judged against the budget the node had when it spent (recorded in the
    # entry); the budget shown is the one in force at the latest event (0 = none).
    budget = entries[-1].max_epsilon if entries[-1].max_epsilon > 0 else None
    breaches = [(e, eps) for e, eps in zip(entries, claims, strict=True)
                if e.max_epsilon > 0 and eps > e.max_epsilon * (1 + BUDGET_TOLERANCE)]
    if breaches:
        entry, eps = breaches[0]
        reasons.append(f"{who} went over budget at round {entry.round} (row "
                       f"{rows[entries.index(entry)].seq}): ε={eps:.6g} (RDP, δ={entry.delta:g}) "
                       f"exceeded its max-epsilon {entry.max_epsilon:g} at the time")
        status.append("over budget")
    if not status:
        status.append("no budget" if budget is None else "within budget")
    changes = [f"{_budget_text(a.max_epsilon)} → {_budget_text(b.max_epsilon)} at round "
               f"{b.round} of run {b.run_id}"
               for a, b in itertools.pairwise(entries) if a.max_epsilon != b.max_epsilon]
    if changes:  # not a failure (the node sets its own budget), but an officer should see it
        status.append("budget changed: " + ", ".join(changes))
    return NodeAudit(node_id, guarantee, audits, report[-1], own[-1], entries[-1].epsilon,
                     rdp[-1], pld[-1], budget, "; ".join(status), tuple(reasons))


def _budget_text(max_epsilon: float) -> str:
    return f"{max_epsilon:g}" if max_epsilon > 0 else "none"


def resolve_ledger(path: Path | str) -> tuple[Path, Path | None]:
    """(ledger file, summary.json next to it or None) for a RUN_DIR, state dir or file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AuditInputError(f"{path} does not exist")
    ledger = path / LEDGER_FILE if path.is_dir() else path
    if not ledger.is_file():
        raise AuditInputError(f"{path} has no {LEDGER_FILE}: give a RUN_DIR, a node's state "
                              "directory or a ledger file")
    summary = ledger.parent / SUMMARY_FILE
    return ledger, summary if summary.is_file() else None


def audit(path: Path | str, delta: float | None = None) -> AuditReport:
    """Audit the ledger at `path`; AuditInputError when it cannot be read as one."""
    if delta is not None and not 0 < delta < 1:
        raise AuditInputError(f"--delta must be in (0, 1), got {delta}")
    ledger_path, summary_path = resolve_ledger(path)
    try:
        ledger = read_ledger(ledger_path)
        owner, rows = ledger.owner, ledger.rows()
    except LedgerError as err:
        raise AuditInputError(f"{ledger_path} is not a readable fedssl ledger ({err})") from None
    head = {"rows": len(rows), "head": rows[-1].row_hash if rows else GENESIS}
    notes: list[str] = []
    anchor, anchor_problems = _summary_anchor(summary_path, notes)
    anchor_problems += check_anchor(head, anchor)
    chain_problems = verify_chain(rows)
    broken = {p.seq for p in chain_problems if p.check in ("type", "value")}
    groups: dict[tuple[str, str], list[LedgerRow]] = {}
    confirmations: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.entry.node_id, row.entry.guarantee)
        if row.seq in broken:
            continue
        if row.entry.is_confirmation:  # never spend: not in the ε recomputation
            confirmations[key] = confirmations.get(key, 0) + 1
        else:
            groups.setdefault(key, []).append(row)
    if broken:
        notes.append(f"{len(broken)} row(s) with invalid values are left out of the ε "
                     "recomputation (see the integrity problems)")
    if not rows:
        notes.append("the ledger is empty: no privacy-consuming event was recorded")
    if owner != "run":  # a node's own ledger (the server's is owned by "run")
        strangers = sorted({str(r.entry.node_id) for r in rows} - {owner})
        if strangers:
            notes.append(f"this is node '{owner}''s own ledger but it holds entries of "
                         f"{', '.join(strangers)}")
    for (node, guarantee), group in groups.items():
        if len({r.entry.delta for r in group}) > 1:
            notes.append(f"node '{node}' ({guarantee}) changed δ between events; each claim "
                         "is checked at its own δ")
    open_hashes = {e.hash for e in unconfirmed([r.entry for r in rows if r.seq not in broken])}
    nodes = tuple(
        dataclasses.replace(audit_node(group, delta),
                            unconfirmed=tuple(r for r in group if r.entry.hash in open_hashes),
                            confirmations=confirmations.get(key, 0))
        for key, group in groups.items())
    notes += _confirmation_notes(nodes)
    return AuditReport(ledger_path, summary_path, owner, len(rows), head["head"], anchor, delta,
                       tuple(chain_problems), tuple(anchor_problems), nodes, tuple(notes))


def _confirmation_notes(nodes: Sequence[NodeAudit]) -> list[str]:
    """One note per node with crashed rounds; one for nodes whose ledger predates confirmations."""
    notes = []
    for node in nodes:
        if node.crashed_rounds:
            where = ", ".join(f"round {r.entry.round} of run {r.entry.run_id} (row {r.seq})"
                              for r in node.crashed_rounds)
            notes.append(f"node '{node.node_id}': {len(node.crashed_rounds)} crashed round(s) "
                         f"(write-ahead entry never confirmed): {where}; counted in full — an "
                         "over-count, never an under-count")
    legacy = sorted(n.node_id for n in nodes if n.legacy)
    if legacy:
        notes.append(f"no confirmations recorded for {', '.join(legacy)}: their entries were "
                     "written before fedssl confirmed completed rounds (or every round "
                     "crashed); all are counted in full, as always")
    return notes


def _summary_anchor(
    summary_path: Path | None, notes: list[str]
) -> tuple[Mapping[str, Any] | None, list[Problem]]:
    if summary_path is None:
        notes.append("no summary.json next to the ledger: a cut-off tail (deleted last rows) "
                     "cannot be detected")
        return None, []
    try:
        summary = json.loads(summary_path.read_text())
        anchor = summary.get("privacy", {}).get("ledger")
    except (OSError, ValueError, AttributeError) as err:
        return None, [Problem("anchor", f"{summary_path} cannot be read, so the ledger's "
                                        f"anchor cannot be checked: {err}")]
    if anchor is None:
        notes.append("summary.json records no ledger anchor: a cut-off tail cannot be detected")
    elif not isinstance(anchor, Mapping):
        return None, [Problem("anchor", f"summary.json's ledger anchor is malformed: {anchor}")]
    return anchor, []
