"""Cross-checks of a run's ledger against the rest of its RUN_DIR, for `fedssl audit`.

A run ledger can be intact and still not tell the whole story. These checks compare it with:

* its **anchor**: the row count and head hash written to summary.json when the run finished,
  or to checkpoint.json after every committed round (a run that crashed has only that one);
  without an anchor a cut-off tail is invisible, so a run ledger without one fails;
* **config.json**: every record-level spend of this RUN_DIR's runs ran `local-steps` DP-SGD
  steps (and σ = `noise-multiplier` when that is fixed); every client-level event is one
  round at `client-noise-multiplier`;
* **metrics.jsonl**: every update the server accepted has its node's spend in the ledger;
* **the simulated nodes' own ledgers** (simulation keeps them under `sim-state-dir`, default
  RUN_DIR/nodes): each must be intact, and the run's copy must hold every spend the node
  wrote for this RUN_DIR's runs: a node whose own chain holds more spend means the run's
  reports under-count it. A confirmation the copy lacks (written after the last sync) only
  makes the copy count that round as crashed, in full: a note, not a failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    RECORD_LEVEL,
    LedgerError,
    LedgerRow,
    read_ledger,
)
from common.privacy.ledger_integrity import Problem, verify_chain
from common.run_layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LEDGER_FILE,
    METRICS_FILE,
    NODES_DIR,
    SUMMARY_FILE,
)


class RunDirError(ValueError):
    """A RUN_DIR file the audit needs is not readable JSON (the audit's bad-input case)."""


def run_dir_anchor(run_dir: Path) -> tuple[Mapping[str, Any] | None, str, list[Problem]]:
    """(anchor, where it came from, problems): summary.json's, else checkpoint.json's.

    RunDirError when one of the two exists but is not readable JSON."""
    for name, path in ((SUMMARY_FILE, ("privacy", "ledger")), (CHECKPOINT_FILE, ("ledger",))):
        file = run_dir / name
        if not file.is_file():
            continue
        try:
            data: Any = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(f"{file} is not readable JSON ({err}): the ledger's anchor "
                              "cannot be checked") from None
        for key in path:
            data = data.get(key) if isinstance(data, Mapping) else None
        if data is None:
            continue
        if not isinstance(data, Mapping):
            return None, name, [Problem("anchor", f"{name}'s ledger anchor is malformed: "
                                                  f"{data}")]
        return data, name, []
    return None, "", [Problem("anchor", "no ledger anchor in summary.json or checkpoint.json: "
                                        "a cut-off tail (deleted last rows) cannot be "
                                        "detected, so this run's ledger cannot be trusted "
                                        "complete")]


def run_ids(run_dir: Path) -> set[str]:
    """The Flower run ids that wrote this RUN_DIR (metrics.jsonl lines and summary.json)."""
    ids: set[str] = set()
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                value = json.loads(line).get("run_id")
                if value:
                    ids.add(str(value))
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        ids.update(str(i) for i in json.loads(summary.read_text()).get("run_ids", []))
    return ids


def run_dir_problems(run_dir: Path, rows: Sequence[LedgerRow]) -> tuple[list[Problem],
                                                                         list[str]]:
    """Problems and notes from comparing the run ledger's rows with the rest of RUN_DIR."""
    problems: list[Problem] = []
    notes: list[str] = []
    try:
        ids = run_ids(run_dir)
        config = json.loads((run_dir / CONFIG_FILE).read_text()) \
            if (run_dir / CONFIG_FILE).is_file() else None
    except (OSError, ValueError, AttributeError) as err:
        raise RunDirError(f"a RUN_DIR file (config.json, metrics.jsonl or summary.json) is "
                          f"not readable JSON: {err}") from None
    if not ids:
        notes.append("metrics.jsonl records no run ids (a RUN_DIR written before fedssl "
                     "recorded them, or no round finished): config, metrics and node-ledger "
                     "cross-checks skipped")
        return problems, notes
    ours = [r for r in rows if r.entry.run_id in ids and not r.entry.is_confirmation]
    if config is None:
        notes.append("no config.json next to the ledger: steps and σ not cross-checked")
    else:
        problems += _config_problems(ours, config)
    try:
        problems += _metrics_problems(run_dir, rows)
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{run_dir / METRICS_FILE} is not valid (one JSON object per round "
                          f"expected): {err}") from None
    node_problems, node_notes = _node_ledger_problems(run_dir, config, rows, ids)
    return problems + node_problems, notes + node_notes


def _config_problems(rows: Sequence[LedgerRow], config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    fixed = config.get("noise-multiplier")
    fixed_sigma = None if fixed in (None, "auto") else float(fixed)
    for row in rows:
        entry = row.entry
        where = f"row {row.seq} (node '{entry.node_id}', round {entry.round})"
        if entry.guarantee == RECORD_LEVEL and entry.node_id != FEDERATION_NODE:
            if entry.steps != config.get("local-steps"):
                problems.append(Problem("config", f"{where}: {entry.steps} DP-SGD steps, but "
                                        f"config.json says local-steps={config.get('local-steps')}",
                                        row.seq, entry.node_id, entry.round))
            if fixed_sigma is not None and entry.noise_multiplier != fixed_sigma:
                problems.append(Problem("config", f"{where}: σ={entry.noise_multiplier}, but "
                                        f"config.json fixes noise-multiplier={fixed_sigma}",
                                        row.seq, entry.node_id, entry.round))
        elif entry.guarantee == CLIENT_LEVEL and entry.node_id == FEDERATION_NODE:
            expected = float(config.get("client-noise-multiplier", entry.noise_multiplier))
            if entry.steps != 1 or entry.noise_multiplier != expected:
                problems.append(Problem("config", f"{where}: client-level event of "
                                        f"{entry.steps} round(s) at z={entry.noise_multiplier}; "
                                        f"config.json says 1 round at z={expected}",
                                        row.seq, entry.node_id, entry.round))
    return problems


def _metrics_problems(run_dir: Path, rows: Sequence[LedgerRow]) -> list[Problem]:
    """Every accepted update in metrics.jsonl has its node's spend for that run and round."""
    spent = {(r.entry.run_id, r.entry.round, r.entry.node_id) for r in rows
             if not r.entry.is_confirmation and r.entry.guarantee == RECORD_LEVEL}
    problems: list[Problem] = []
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        return [Problem("metrics", f"{METRICS_FILE} is missing, but summary.json names this "
                                   "RUN_DIR's runs: the rounds the server used cannot be "
                                   "checked against the ledger")]
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        run_id = data.get("run_id")
        if not run_id:
            continue
        for client in data.get("clients", []):
            key = (str(run_id), int(data["round"]), str(client.get("node")))
            if key not in spent:
                problems.append(Problem(
                    "metrics", f"round {data['round']}: the server used an update of node "
                    f"'{client.get('node')}' but the ledger holds no spend of it for that "
                    "round", None, str(client.get("node")), int(data["round"])))
    return problems


def simulated_node_ledgers(run_dir: Path) -> list[Path]:
    """The simulated nodes' own ledgers of this RUN_DIR (config `sim-state-dir`, default
    RUN_DIR/nodes); none outside simulation."""
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = {}
    root = Path(str(config.get("sim-state-dir") or run_dir / NODES_DIR)).expanduser()
    return sorted(root.glob(f"*/{LEDGER_FILE}")) if root.is_dir() else []


def _node_ledger_problems(run_dir: Path, config: Mapping[str, Any] | None,
                          rows: Sequence[LedgerRow], ids: set[str]
                          ) -> tuple[list[Problem], list[str]]:
    ledgers = simulated_node_ledgers(run_dir)
    if not ledgers:
        return [], []
    state_root = ledgers[0].parent.parent
    have = {r.entry.hash for r in rows}
    problems: list[Problem] = []
    notes: list[str] = []
    for path in ledgers:
        try:
            node_ledger = read_ledger(path)
            owner, node_rows = node_ledger.owner, node_ledger.rows()
        except LedgerError as err:
            problems.append(Problem("node-ledger", f"simulated node ledger {path} cannot be "
                                                   f"read: {err}"))
            continue
        for problem in verify_chain(node_rows):
            problems.append(Problem("node-ledger", f"node '{owner}''s own ledger ({path}): "
                                                   f"{problem}", problem.seq, owner,
                                    problem.round))
        entries = [r.entry for r in node_rows if r.entry.node_id == owner]
        first = next((i for i, e in enumerate(entries) if e.run_id in ids), len(entries))
        ours = [e for e in entries[first:] if e.run_id in ids]
        missing = [e for e in ours if e.hash not in have and not e.is_confirmation]
        if missing:
            rounds = sorted({e.round for e in missing})
            problems.append(Problem(
                "node-ledger", f"node '{owner}''s own ledger holds {len(missing)} spend "
                f"entr{'y' if len(missing) == 1 else 'ies'} of this run (round(s) "
                f"{', '.join(map(str, rounds))}) that the run's ledger lacks: the run's "
                "reports under-count this node's spend", None, owner, rounds[0]))
        late = [e for e in ours if e.hash not in have and e.is_confirmation]
        if late:  # an over-count in the run's copy, never an under-count
            notes.append(f"node '{owner}' confirmed {len(late)} round(s) after the server's "
                         "last copy of its ledger (round(s) "
                         f"{', '.join(str(e.round) for e in late)}): the run's copy counts "
                         "them as crashed rounds, in full")
    notes.append(f"cross-checked {len(ledgers)} simulated node ledger(s) under {state_root}")
    return problems, notes
