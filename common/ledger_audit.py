"""Independent audit of a privacy ledger: is it intact, are its ε claims right, are budgets kept?

Pure functions over the rows of a ledger file (common/privacy_ledger.py); no Flower, no output.
Every node's ε is recomputed from its raw events with two accountants: Opacus's RDP accountant
(the one nodes claim with, so claims must match it) and dp-accounting's PLD accountant (an
independent implementation; typically tighter). Numbers are never mixed across guarantees:
record-level DP per client and client-level DP for the federation are separate results.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.pld.privacy_loss_distribution import (
    PrivacyLossDistribution,
    from_gaussian_mechanism,
    identity,
)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from common.privacy_accounting import ACCOUNTANT, RDP_ORDERS, HistoryEntry
from common.privacy_ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GAUSSIAN_NO_AMPLIFICATION,
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    LedgerEntry,
    LedgerError,
    LedgerRow,
    read_ledger,
    row_hash,
)

LEDGER_FILE = "ledger.sqlite"
SUMMARY_FILE = "summary.json"
CLAIM_TOLERANCE = 1e-6  # relative; nodes compute exactly this, so only float noise is allowed
BUDGET_TOLERANCE = 1e-9  # relative; a budget breach by float noise alone is not a breach
PLD_DISCRETIZATION = 1e-4  # dp-accounting's PLDAccountant default (its reference numbers)
ACCOUNTANTS = {
    "claimed": "written by the node: Opacus RDP accountant at the entry's own δ",
    "rdp": "recomputed: Opacus RDP accountant (fedssl RDP orders), add/remove-one adjacency",
    "pld": "recomputed: dp-accounting PLD accountant (pessimistic, discretization "
           f"{PLD_DISCRETIZATION:g}), add/remove-one adjacency",
}
_GUARANTEES = {RECORD_LEVEL, CLIENT_LEVEL}
_MECHANISMS = {POISSON_GAUSSIAN, GAUSSIAN_NO_AMPLIFICATION}
_FIELD_TYPES = {f.name: str(f.type) for f in fields(LedgerEntry)}


class AuditInputError(ValueError):
    """PATH cannot be audited: missing, not a ledger, corrupt, or a bad δ."""


@dataclass(frozen=True)
class Problem:
    """One failed check, in plain words; `seq`/`node_id`/`round` name the entry when known."""

    check: str  # entry-hash, row-seq, row-chain, row-hash, node-chain, type, value, anchor
    message: str
    seq: int | None = None
    node_id: str | None = None
    round: int | None = None

    def __str__(self) -> str:
        return self.message


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
    budget: float | None  # latest non-zero max_epsilon; None = no budget
    status: str
    reasons: tuple[str, ...]

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


# --------------------------------------------------------------------------------- integrity

def verify_chain(rows: Sequence[LedgerRow]) -> list[Problem]:
    """Every integrity problem in file order; the first one names the first broken entry.

    Each link is compared with the *stored* hash it should point at, so one edit is reported
    where it happened rather than at every later row.
    """
    problems: list[Problem] = []
    by_row_hash = {r.row_hash: r for r in rows}
    by_entry_hash = {r.entry.hash: r for r in rows}
    previous: LedgerRow | None = None
    last_of_node: dict[Any, LedgerRow] = {}
    for row in rows:
        entry = row.entry

        def flag(check: str, text: str, row: LedgerRow = row) -> None:
            problems.append(Problem(check, f"{_where(row)}: {text}", row.seq,
                                    str(row.entry.node_id), _round_of(row)))

        type_errors = _type_errors(row)
        for text in type_errors:
            flag("type", text)
        if not type_errors and entry.computed_hash() != entry.hash:
            flag("entry-hash", "the entry's contents do not match its hash: a field (or the "
                 "hash) was changed after the node wrote it")
        expected_seq = previous.seq + 1 if previous else 1
        if row.seq != expected_seq:
            flag("row-seq", f"row numbers jump from {previous.seq} to {row.seq}: rows were "
                 "deleted or renumbered" if previous else f"row numbers start at {row.seq}, "
                 "not 1: earlier rows were deleted or renumbered")
        expected_prev = previous.row_hash if previous else GENESIS
        if row.row_prev != expected_prev:
            flag("row-chain", _row_link_text(row, previous, by_row_hash))
        if not type_errors and row.row_hash != row_hash(row.row_prev, entry.hash):
            flag("row-hash", "its row hash does not cover its link and entry hash: the row "
                 "hash or the link was altered")
        node_previous = last_of_node.get(entry.node_id)
        if entry.prev_hash != (node_previous.entry.hash if node_previous else GENESIS):
            flag("node-chain", _node_link_text(row, node_previous, by_entry_hash))
        if not type_errors:
            for text in _value_errors(entry):
                flag("value", text)
        previous = row
        last_of_node[entry.node_id] = row
    return problems


def check_anchor(
    ledger_head: Mapping[str, Any], summary_anchor: Mapping[str, Any] | None
) -> list[Problem]:
    """Compare the ledger's head with the one summary.json recorded when the run finished.

    Only the anchor reveals a cut-off tail: deleting the last rows leaves both chains intact.
    """
    if summary_anchor is None:
        return []
    rows, head = summary_anchor.get("rows"), summary_anchor.get("head")
    if not isinstance(rows, int) or isinstance(rows, bool) or not isinstance(head, str):
        return [Problem("anchor", f"summary.json's ledger anchor is malformed: {summary_anchor}")]
    have = ledger_head["rows"]
    if have < rows:
        text = (f"the ledger has {have} rows but summary.json recorded {rows} when the run "
                f"finished: the last {rows - have} row(s) were cut off")
    elif have > rows:
        text = (f"the ledger has {have} rows but summary.json recorded {rows} when the run "
                "finished: rows were added or inserted afterwards")
    elif ledger_head["head"] != head:
        text = ("the ledger's last row hash differs from the one summary.json recorded: "
                "rows were altered or replaced")
    else:
        return []
    return [Problem("anchor", text)]


def _where(row: LedgerRow) -> str:
    return f"row {row.seq} (node '{row.entry.node_id}', round {row.entry.round})"


def _round_of(row: LedgerRow) -> int | None:
    value = row.entry.round
    return value if isinstance(value, int) else None


def _row_link_text(row: LedgerRow, previous: LedgerRow | None,
                   by_row_hash: Mapping[str, LedgerRow]) -> str:
    source = by_row_hash.get(row.row_prev)
    before = f"row {previous.seq}" if previous else "the start of the file"
    if source is not None and source is not row:
        return (f"its row link points at row {source.seq}, not at {before}: rows were "
                "reordered, or a row was inserted or deleted here")
    if row.row_prev == GENESIS:
        return f"it was written as the first row but follows {before}: rows were inserted"
    return (f"its row link points at no row in this file, not at {before}: the row before "
            "it was deleted, or the link was altered")


def _node_link_text(row: LedgerRow, node_previous: LedgerRow | None,
                    by_entry_hash: Mapping[str, LedgerRow]) -> str:
    node = row.entry.node_id
    expected = (f"node '{node}''s previous entry (row {node_previous.seq}, round "
                f"{node_previous.entry.round})" if node_previous
                else f"the start of node '{node}''s chain (it is the node's first entry here)")
    source = by_entry_hash.get(row.entry.prev_hash)
    if source is not None and source is not row:
        return (f"its entry link points at row {source.seq}, not at {expected}: node "
                "entries were reordered or one was inserted")
    return (f"its entry link does not point at {expected}: an earlier entry of this node "
            "is missing (deleted), or the link was altered")


def _type_errors(row: LedgerRow) -> list[str]:
    errors = []
    for name, kind in _FIELD_TYPES.items():
        value = getattr(row.entry, name)
        good = (isinstance(value, str) if kind == "str"
                else isinstance(value, int) and not isinstance(value, bool) if kind == "int"
                else isinstance(value, int | float) and not isinstance(value, bool))
        if not good:
            errors.append(f"field {name} holds {value!r}, not a {kind}")
    for name in ("row_prev", "row_hash"):
        if not isinstance(getattr(row, name), str):
            errors.append(f"column {name} holds {getattr(row, name)!r}, not a str")
    return errors


def _value_errors(entry: LedgerEntry) -> list[str]:
    """Values no honest writer produces; `not (...)` so that NaN fails every check."""
    checks = [
        (entry.guarantee in _GUARANTEES, f"unknown guarantee {entry.guarantee!r}"),
        (entry.mechanism in _MECHANISMS, f"unknown mechanism {entry.mechanism!r}"),
        (entry.accountant == ACCOUNTANT, f"unknown accountant {entry.accountant!r}"),
        (0 < entry.delta < 1, f"δ={entry.delta} is not in (0, 1)"),
        (0 < entry.sample_rate <= 1, f"sample rate q={entry.sample_rate} is not in (0, 1]"),
        (entry.mechanism != GAUSSIAN_NO_AMPLIFICATION or entry.sample_rate == 1,
         f"mechanism {GAUSSIAN_NO_AMPLIFICATION} must account with q=1, not "
         + f"q={entry.sample_rate} (that would claim amplification it does not have)"),
        (0 <= entry.noise_multiplier < math.inf,
         f"noise multiplier σ={entry.noise_multiplier} is not a finite number ≥ 0"),
        (entry.steps >= 0, f"steps={entry.steps} is negative"),
        (entry.round >= 0, f"round={entry.round} is negative"),
        (entry.epsilon >= 0, f"claimed ε={entry.epsilon} is not ≥ 0"),
        (entry.max_epsilon >= 0, f"max_epsilon={entry.max_epsilon} is not ≥ 0"),
        (bool(entry.node_id.strip()), "empty node id"),
    ]
    errors = [text for good, text in checks if not good]
    try:
        datetime.fromisoformat(entry.timestamp)
    except ValueError:
        errors.append(f"timestamp {entry.timestamp!r} is not an ISO 8601 time")
    return errors


# -------------------------------------------------------------------------------- accounting

def rdp_curve(events: Sequence[HistoryEntry], deltas: Sequence[float]) -> list[float]:
    """ε after each event with Opacus's RDP accountant, event i evaluated at `deltas[i]`.

    Bit-identical to `epsilon_of(events[:i+1], deltas[i])`, which is how nodes claim: the same
    per-event `compute_rdp` arrays summed in the same order, but each event's RDP is computed
    once (one (σ, q) costs up to ~0.1 s; a 200-round history would otherwise cost seconds).
    """
    total: Any = 0
    curve = []
    with warnings.catch_warnings():
        # The best order sits at an end of RDP_ORDERS: the bound is looser, not wrong.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        for (sigma, rate, steps), delta in zip(events, deltas, strict=True):
            total = total + _step_rdp(float(sigma), float(rate)) * int(steps)
            eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
            curve.append(float(eps))
    return curve


def pld_curve(events: Sequence[HistoryEntry], deltas: Sequence[float]) -> list[float]:
    """ε after each event with dp-accounting's PLD accountant, event i at `deltas[i]`.

    Composes what `PLDAccountant` composes for `SelfComposedDpEvent(PoissonSampledDpEvent(q,
    GaussianDpEvent(σ)), steps)` (a plain Gaussian when q = 1), one event at a time, so the
    whole curve costs one composition per event; σ = 0 makes ε infinite from then on.
    """
    total = identity(value_discretization_interval=PLD_DISCRETIZATION)
    non_private = False
    curve: list[float] = []
    for (sigma, rate, steps), delta in zip(events, deltas, strict=True):
        if steps > 0 and sigma == 0:
            non_private = True
        elif steps > 0 and not non_private:
            total = total.compose(_event_pld(float(sigma), float(rate), int(steps)))
        curve.append(math.inf if non_private else float(total.get_epsilon_for_delta(delta)))
    return curve


@functools.lru_cache(maxsize=4096)
def _step_rdp(sigma: float, rate: float) -> np.ndarray:
    # compute_rdp(steps=n) is this array times n, so caching one step loses nothing.
    return np.asarray(compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=RDP_ORDERS))


@functools.lru_cache(maxsize=256)
def _event_pld(sigma: float, rate: float, steps: int) -> PrivacyLossDistribution:
    relation = NeighboringRelation.ADD_OR_REMOVE_ONE
    if rate == 1:
        return from_gaussian_mechanism(sigma / math.sqrt(steps), neighboring_relation=relation,
                                       value_discretization_interval=PLD_DISCRETIZATION)
    return _step_pld(sigma, rate).self_compose(steps)


@functools.lru_cache(maxsize=256)
def _step_pld(sigma: float, rate: float) -> PrivacyLossDistribution:
    return from_gaussian_mechanism(sigma, sampling_prob=rate,
                                   value_discretization_interval=PLD_DISCRETIZATION,
                                   neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)


def claim_consistent(claimed: float, recomputed: float) -> bool:
    """Equal up to CLAIM_TOLERANCE (relative); infinite only equals infinite."""
    if math.isinf(recomputed) or math.isinf(claimed):
        return claimed == recomputed
    return abs(claimed - recomputed) <= CLAIM_TOLERANCE * max(abs(recomputed), 1e-12)


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
    budgets = [e.max_epsilon for e in entries if e.max_epsilon > 0]
    budget = budgets[-1] if budgets else None
    breaches = [(e, eps) for e, eps in zip(entries, claims, strict=True)
                if e.max_epsilon > 0 and eps > e.max_epsilon * (1 + BUDGET_TOLERANCE)]
    if budget is not None and claims[-1] > budget * (1 + BUDGET_TOLERANCE):
        reasons.append(f"{who} is over budget: ε={claims[-1]:.6g} (RDP, δ={own[-1]:g}) "
                       f"exceeds its max-epsilon {budget:g}")
        status.append("over budget")
    elif breaches:
        entry, eps = breaches[0]
        reasons.append(f"{who} went over budget at round {entry.round}: ε={eps:.6g} (RDP, "
                       f"δ={entry.delta:g}) exceeded its max-epsilon {entry.max_epsilon:g} then")
        status.append("over budget")
    if not status:
        status.append("no budget" if budget is None else "within budget")
    return NodeAudit(node_id, guarantee, audits, report[-1], own[-1], entries[-1].epsilon,
                     rdp[-1], pld[-1], budget, "; ".join(status), tuple(reasons))


# ------------------------------------------------------------------------------- entry point

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
    for row in rows:
        if row.seq not in broken:
            groups.setdefault((row.entry.node_id, row.entry.guarantee), []).append(row)
    if broken:
        notes.append(f"{len(broken)} row(s) with invalid values are left out of the ε "
                     "recomputation (see the integrity problems)")
    if not rows:
        notes.append("the ledger is empty: no privacy-consuming event was recorded")
    if owner != "run":
        strangers = sorted({str(r.entry.node_id) for r in rows} - {owner})
        if strangers:
            notes.append(f"this is node '{owner}''s own ledger but it holds entries of "
                         f"{', '.join(strangers)}")
    for (node, guarantee), group in groups.items():
        if len({r.entry.delta for r in group}) > 1:
            notes.append(f"node '{node}' ({guarantee}) changed δ between events; each claim "
                         "is checked at its own δ")
    nodes = tuple(audit_node(group, delta) for group in groups.values())
    return AuditReport(ledger_path, summary_path, owner, len(rows), head["head"], anchor, delta,
                       tuple(chain_problems), tuple(anchor_problems), nodes, tuple(notes))


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
