"""Independent audit of a privacy ledger: is it intact, are its ε claims right, are budgets kept,
and is there a DP guarantee at all?

Pure functions over the rows of a ledger file (common/privacy/ledger.py); no Flower, no output.
This is the entry point (`audit`); the integrity checks live in common/privacy/ledger_integrity.py, the
ε recomputation in common/privacy/epsilon_curves.py and the RUN_DIR cross-checks in
common/privacy/run_dir_checks.py. Every node's ε is recomputed from its raw events three ways: with the
accountant its entries name (claims must match it), with dp-accounting's PLD under the
neighbouring relation that really holds (claims must not be below it), and with an independent
RDP upper bound. Numbers are never mixed across guarantees: record-level DP per client and
client-level DP for the federation are separate results.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.privacy.epsilon_curves import (
    ACCOUNTANTS,
    claim_consistent,
    claim_covers,
    claim_curve,
    pld_curve,
    rdp_curve,
)
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GENESIS,
    RECORD_LEVEL,
    LedgerError,
    LedgerRow,
    read_ledger,
    unconfirmed,
)
from common.privacy.ledger_integrity import (
    RELATION_OF,
    Problem,
    check_anchor,
    verify_chain,
    withheld_chains,
)
from common.privacy.run_dir_checks import (
    RunDirError,
    run_dir_anchor,
    run_dir_problems,
    simulated_node_ledgers,
)
from common.run_layout import LEDGER_FILE, RUN_OWNER, SUMMARY_FILE

__all__ = [
    "ACCOUNTANTS", "AuditInputError", "AuditReport", "EventAudit", "NodeAudit", "Problem",
    "audit", "audit_node", "guarantee_label", "resolve_ledger",
]

BUDGET_TOLERANCE = 1e-9  # relative; a budget breach by float noise alone is not a breach


class AuditInputError(ValueError):
    """PATH cannot be audited: missing, not a ledger, corrupt, or a bad δ."""


@dataclass(frozen=True)
class EventAudit:
    """One ledger event with ε recomputed after it (cumulative for its node and guarantee).

    `epsilon_rdp` and `epsilon_pld` are under the relation that holds for the guarantee, at
    the report δ; `recomputed_claim` uses the entry's own accountant, relation and δ.
    """

    row: LedgerRow
    epsilon_rdp: float  # independent upper bound, at the report δ
    epsilon_pld: float  # at the report δ
    recomputed_claim: float  # what the writer should have claimed (its accountant, its δ)
    claim_consistent: bool  # claim == recomputed_claim (≥ when earlier spend is withheld)
    claim_covers: bool = True  # claim ≥ PLD under the relation that holds, at the entry's δ


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
    relation: str = ""  # the neighbouring relation ε is recomputed for (what holds)
    withheld: bool = False  # a run ledger's copy continues an earlier chain the node kept
    reproducible: tuple[LedgerRow, ...] = ()  # events whose noise the run seed reproduces

    @property
    def guaranteed(self) -> bool:
        """Every event's noise was secret: the ε is a DP guarantee (else there is none)."""
        return not self.reproducible

    @property
    def legacy(self) -> bool:
        """A node's record-level chain with no confirmation and only format-1 entries: it may
        predate confirmations, so a crash cannot be told from a finished round. (Format 2
        came after confirmations: without one, each of its entries is a crashed round.)"""
        return (self.guarantee == RECORD_LEVEL and self.node_id != FEDERATION_NODE
                and self.confirmations == 0
                and all(r.entry.is_legacy for r in self.unconfirmed))

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
    run_problems: tuple[Problem, ...] = ()  # RUN_DIR cross-checks (common/privacy/run_dir_checks.py)
    anchor_source: str = ""  # summary.json or checkpoint.json

    @property
    def ok(self) -> bool:
        """Intact, consistent, complete, a DP guarantee, and within budget."""
        return not self.reasons

    @property
    def guaranteed(self) -> bool:
        """No event's noise can be reproduced from the run seed."""
        return all(node.guaranteed for node in self.nodes)

    @property
    def reasons(self) -> list[str]:
        """Why the audit fails, first broken entry first (empty when it passes)."""
        return ([str(p) for p in (*self.chain_problems, *self.anchor_problems,
                                  *self.run_problems)]
                + [r for node in self.nodes for r in node.reasons])


def guarantee_label(node_id: str, guarantee: str) -> str:
    """'record-level DP, per client' or 'client-level DP, for the federation' (or a node)."""
    if guarantee == CLIENT_LEVEL:
        return ("client-level DP, for the federation" if node_id == FEDERATION_NODE
                else f"client-level DP, applied by node '{node_id}'")
    return "record-level DP, per client"


def audit_node(rows: Sequence[LedgerRow], delta: float | None = None,
               withheld: bool = False) -> NodeAudit:
    """Recompute one node's ε for one guarantee from its rows (file order) and judge it.

    Claims and budgets are judged at each entry's own δ; `delta` only moves the reported ε.
    With `withheld`, the rows continue an earlier chain the node did not send: its claims
    include spend not shown, so they can only be checked to be at least what is shown.
    """
    entries = [r.entry for r in rows]
    node_id, guarantee = entries[0].node_id, entries[0].guarantee
    relation = RELATION_OF[guarantee] if guarantee in RELATION_OF else RELATION_OF[RECORD_LEVEL]
    events = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    own = [e.delta for e in entries]
    claims = claim_curve(events, own, [e.accountant for e in entries],
                         [e.relation for e in entries])
    report = own if delta is None else [delta] * len(entries)
    pld_own = pld_curve(events, own, relation)
    floor = pld_curve(events, own, relation, pessimistic=False)  # a lower bound on true ε
    pld = pld_own if delta is None else pld_curve(events, report, relation)
    rdp = rdp_curve(events, report, relation)
    audits = tuple(
        EventAudit(r, a, b, c,
                   claim_covers(r.entry.epsilon, c) if withheld
                   else claim_consistent(r.entry.epsilon, c),
                   claim_covers(r.entry.epsilon, low))
        for r, a, b, c, low in zip(rows, rdp, pld, claims, floor, strict=True))
    who = f"node '{node_id}' ({guarantee_label(node_id, guarantee)})"
    reasons, status = [], []
    wrong = [e for e in audits if not e.claim_consistent]
    if wrong:
        first = wrong[0]
        kind = "under-claims" if first.row.entry.epsilon < first.recomputed_claim else "over-claims"
        reasons.append(
            f"{who} {kind}: it claimed ε={first.row.entry.epsilon:.6g} at round "
            f"{first.row.entry.round} (row {first.row.seq}, δ={first.row.entry.delta:g}, "
            f"{first.row.entry.accountant.upper()}) but its events give "
            f"ε={first.recomputed_claim:.6g}"
            + (f"; {len(wrong) - 1} more inconsistent claim(s)" if len(wrong) > 1 else ""))
        status.append("inconsistent claims")
    short = [e for e in audits if not e.claim_covers]
    if short:
        first = short[0]
        reasons.append(
            f"{who} under-states ε for the relation that holds ({relation}): it claimed "
            f"ε={first.row.entry.epsilon:.6g} at round {first.row.entry.round} (row "
            f"{first.row.seq}, δ={first.row.entry.delta:g}"
            + (", format 1: add/remove-one" if first.row.entry.is_legacy else "")
            + f") but PLD under {relation} gives at least ε={floor[audits.index(first)]:.6g}"
            + (f"; {len(short) - 1} more such event(s)" if len(short) > 1 else ""))
        status.append(f"under-claims for {relation}")
    reproducible = tuple(r for r in rows if r.entry.reproducible_noise)
    if reproducible:
        legacy = all(r.entry.is_legacy for r in reproducible)
        reasons.append(
            f"{who} has NO DP GUARANTEE: the noise of {len(reproducible)} event(s) (first: "
            f"round {reproducible[0].entry.round} of run {reproducible[0].entry.run_id}, row "
            f"{reproducible[0].seq}) can be recomputed by whoever knows the run seed"
            + (" (format-1 entries: fedssl drew DP noise from the run seed before format 2)"
               if legacy else " (the simulation switch reproducible-noise was on)"))
        status.append("no DP guarantee")
    if withheld:
        status.append("earlier spend withheld by the node (claims include it)")
    # Each event is judged against the budget the node had when it spent (recorded in the
    # entry); the budget shown is the one in force at the latest event (0 = none). Where
    # earlier spend is withheld, the node's own claim is the best known ε.
    budget = entries[-1].max_epsilon if entries[-1].max_epsilon > 0 else None
    # The budget holds for the relation that holds: a format-1 claim under add/remove does
    # not keep a node within budget when its replace-one ε is past it.
    known = [max(max(c, e.epsilon) if withheld else c, p)
             for c, e, p in zip(claims, entries, pld_own, strict=True)]
    breaches = [(e, eps) for e, eps in zip(entries, known, strict=True)
                if e.max_epsilon > 0 and eps > e.max_epsilon * (1 + BUDGET_TOLERANCE)]
    if breaches:
        entry, eps = breaches[0]
        reasons.append(f"{who} went over budget at round {entry.round} (row "
                       f"{rows[entries.index(entry)].seq}): ε={eps:.6g} "
                       f"({entry.accountant.upper()}, δ={entry.delta:g}) exceeded its "
                       f"max-epsilon {entry.max_epsilon:g} at the time")
        status.append("over budget")
    if not [x for x in status if not x.startswith("earlier spend")]:
        status.insert(0, "no budget" if budget is None else "within budget")
    changes = [f"{_budget_text(a.max_epsilon)} → {_budget_text(b.max_epsilon)} at round "
               f"{b.round} of run {b.run_id}"
               for a, b in itertools.pairwise(entries) if a.max_epsilon != b.max_epsilon]
    if changes:  # not a failure (the node sets its own budget), but an officer should see it
        status.append("budget changed: " + ", ".join(changes))
    return NodeAudit(node_id, guarantee, audits, report[-1], own[-1], entries[-1].epsilon,
                     rdp[-1], pld[-1], budget, "; ".join(status), tuple(reasons),
                     relation=relation, withheld=withheld, reproducible=reproducible)


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
    """Audit the ledger at `path`; AuditInputError when it cannot be read as one.

    A run's ledger (owner "run") is also cross-checked against its RUN_DIR: anchor, config,
    metrics and, in simulation, every simulated node's own ledger (common/privacy/run_dir_checks.py).
    """
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
    is_run = owner == RUN_OWNER
    run_problems: list[Problem] = []
    if is_run:
        try:
            anchor, anchor_source, anchor_problems = run_dir_anchor(ledger_path.parent)
            checked, run_notes = run_dir_problems(ledger_path.parent, rows)
        except RunDirError as err:
            raise AuditInputError(str(err)) from None
        run_problems += checked
        notes += run_notes
    else:
        anchor, anchor_source, anchor_problems = None, "", []
        notes.append("a node's own ledger has no anchor: a cut-off tail cannot be detected "
                     "(compare its row count with the server's copy)")
    anchor_problems += check_anchor(head, anchor, anchor_source or SUMMARY_FILE)
    chain_problems = verify_chain(rows, withheld_starts=is_run)
    withheld = withheld_chains(rows) if is_run else {}
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
    if not is_run:  # a node's own ledger
        strangers = sorted({str(r.entry.node_id) for r in rows} - {owner})
        if strangers:
            notes.append(f"this is node '{owner}''s own ledger but it holds entries of "
                         f"{', '.join(strangers)}")
    for (node, guarantee), group in groups.items():
        if len({r.entry.delta for r in group}) > 1:
            notes.append(f"node '{node}' ({guarantee}) changed δ between events; each claim "
                         "is checked at its own δ")
    for node in sorted(withheld):
        notes.append(f"node '{node}' sent only this run's entries: {withheld[node]} of them "
                     "link to entries it kept to itself (other runs; its own `fedssl audit "
                     "STATE_DIR` verifies them). Its claims include that spend.")
    open_hashes = {e.hash for e in unconfirmed([r.entry for r in rows if r.seq not in broken])}
    nodes = tuple(
        dataclasses.replace(audit_node(group, delta, withheld=key[0] in withheld),
                            unconfirmed=tuple(r for r in group if r.entry.hash in open_hashes),
                            confirmations=confirmations.get(key, 0))
        for key, group in groups.items())
    notes += _confirmation_notes(nodes)
    if withheld:  # simulation: the withheld part is on disk, so check those claims in full
        run_problems += _withheld_claim_problems(ledger_path.parent, set(withheld))
    return AuditReport(ledger_path, summary_path, owner, len(rows), head["head"], anchor, delta,
                       tuple(chain_problems), tuple(anchor_problems), nodes, tuple(notes),
                       tuple(run_problems), anchor_source)


def _withheld_claim_problems(run_dir: Path, nodes: set[str]) -> list[Problem]:
    """For simulated nodes whose run-ledger chain continues a withheld earlier part, audit the
    claims of their own ledgers (which hold everything) with the same checks."""
    problems = []
    for path in simulated_node_ledgers(run_dir):
        try:
            ledger = read_ledger(path)
            owner, rows = ledger.owner, ledger.rows()
        except LedgerError:
            continue  # reported by the RUN_DIR cross-checks
        if owner not in nodes:
            continue
        spends = [r for r in rows if r.entry.node_id == owner and not r.entry.is_confirmation]
        if spends:
            problems += [Problem("node-ledger", f"node '{owner}''s own ledger ({path}): {reason}",
                                 node_id=owner)
                         for reason in audit_node(spends).reasons]
    return problems


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
        notes.append(f"no confirmations recorded for {', '.join(legacy)}: their format-1 "
                     "entries may predate confirmed rounds (or every round crashed); all are "
                     "counted in full, as always")
    return notes
