"""The privacy section of every run output (summary.json, report.md, the console, sweeps),
built from one source: the run's ledger, never from client metrics.

Per node it states the node's own claim (its lifetime ε, at its own δ, under replace-one
neighbours) and recomputes from the ledger what can be recomputed: this run's ε, and the
lifetime ε at the run's δ so that nodes can be compared at one δ. A node whose latest spend the
server may not have seen (server/ledger_sync.py) is shown as a lower bound ("≥") with the
reason; a sampled node never heard from at all is listed as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.privacy.accounting import ACCOUNTANT, ADD_REMOVE, REPLACE_ONE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    GENESIS,
    RECORD_LEVEL,
    SECRET_NOISE,
    LedgerEntry,
    PrivacyLedger,
)
from common.run_config import RunConfig
from server.ledger_sync import LedgerCoverage

RECORD_GUARANTEE = "record-level DP per client (Opacus DP-SGD, Poisson sampling)"
CLIENT_GUARANTEE = "client-level DP for the federation (DP-FedAvg)"
NO_GUARANTEE = ("NO DP GUARANTEE: reproducible-noise was on, so the DP noise and sampling can "
                "be recomputed from the run seed")


def privacy_section(
    ledger: PrivacyLedger, coverage: LedgerCoverage, config: RunConfig, run_ids: set[str],
    records: Mapping[str, int], refusals: int,
) -> dict[str, Any]:
    """summary.json's `privacy` object (docs/run-dir.md)."""
    entries = ledger.entries()
    spends = [e for e in entries if not e.is_confirmation]
    incomplete = coverage.missing(ledger)
    nodes = sorted({e.node_id for e in spends
                    if e.guarantee == RECORD_LEVEL and e.node_id != FEDERATION_NODE})
    clients = [_node_view(node, entries, config, run_ids, records.get(node), incomplete)
               for node in nodes]
    heard = set(nodes)
    unknown = [{"node": name, "reason": why} for name, why in sorted(incomplete.items())
               if name not in heard]
    guaranteed = all(c["dp_guarantee"] for c in clients) and all(
        e.noise == SECRET_NOISE for e in spends if e.run_id in run_ids)
    at_run_delta = [c["epsilon_at_run_delta"] for c in clients]
    return {
        "guarantee": RECORD_GUARANTEE,
        "dp_guarantee": guaranteed,
        "noise": "secret (per message, never stored or sent)" if guaranteed else NO_GUARANTEE,
        "relation": REPLACE_ONE,
        "accountant": ACCOUNTANT,
        "delta": config.delta,
        "max_epsilon": max(at_run_delta, default=0.0),
        "max_epsilon_lower_bound": any(c["lower_bound"] for c in clients) or bool(unknown),
        "per_client": {c["node"]: c["epsilon"] for c in clients},
        "clients": clients,
        "unknown_nodes": unknown,
        "target_epsilon": config.target_epsilon
        if config.fixed_noise_multiplier is None else None,
        "above_target": [c["node"] for c in clients
                         if config.fixed_noise_multiplier is None
                         and c["epsilon"] > config.target_epsilon],
        "noise_multiplier": config.noise_multiplier,
        "clip_norm": config.clip_norm,
        "budget_refusals": refusals,
        "train_loss_released": config.release_train_loss,
        "client_level": _client_level(spends, config),
        "ledger": {"file": "ledger.sqlite", **ledger.head()},
    }


def _node_view(node: str, entries: list[LedgerEntry], config: RunConfig, run_ids: set[str],
               records: int | None, incomplete: Mapping[str, str]) -> dict[str, Any]:
    """One node's row: its claim, what the ledger lets the server recompute, and gaps."""
    own = [e for e in entries if e.node_id == node]
    spends = [e for e in own if not e.is_confirmation and e.guarantee == RECORD_LEVEL]
    latest = spends[-1]
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in spends]
    this_run = [(e.noise_multiplier, e.sample_rate, e.steps) for e in spends
                if e.run_id in run_ids]
    hashes = {e.hash for e in own}
    # Spend the node kept to itself: entries here that link to one not sent (other runs).
    withheld = any(e.prev_hash != GENESIS and e.prev_hash not in hashes for e in own)
    delta = latest.delta
    lower_bound = node in incomplete
    notes = [f"≥: {incomplete[node]}"] if lower_bound else []
    if latest.delta == config.delta:
        at_run_delta = latest.epsilon
    elif not withheld:
        at_run_delta = epsilon_of(history, config.delta, REPLACE_ONE)
    elif latest.delta <= config.delta:
        at_run_delta = latest.epsilon  # ε falls as δ grows: the claim bounds it from above
    else:
        # Not recomputable (the earlier history stays on the node), and ε at the smaller run
        # δ is larger than the claim: the claim is a lower bound there.
        at_run_delta = latest.epsilon
        lower_bound = True
        notes.append(f"≥ at the run's δ: claimed at δ={delta:g} > {config.delta:g} with "
                     "earlier spend withheld, so it cannot be recomputed at the run's δ")
    if withheld:
        notes.append("earlier spend withheld by the node (included in its claim)")
    if records is not None and delta > 1 / max(records, 1):
        notes.append(f"δ={delta:g} is above 1/n = 1/{records}")
    seeded = [e for e in spends if e.noise != SECRET_NOISE]
    if seeded:
        notes.append("NO DP GUARANTEE: " + ("format-1 entries (noise from the run seed)"
                                            if all(e.is_legacy for e in seeded)
                                            else "reproducible noise")
                     + f" in {len(seeded)} of its events")
    return {
        "node": node,
        "epsilon": latest.epsilon,
        "delta": delta,
        "epsilon_at_run_delta": at_run_delta,
        "run_epsilon": epsilon_of(this_run, delta, REPLACE_ONE),
        "lower_bound": lower_bound,
        "dp_guarantee": not seeded,
        "max_epsilon": latest.max_epsilon,
        "noise_multiplier": latest.noise_multiplier,
        "sample_rate": latest.sample_rate,
        "run_steps": sum(n for _, _, n in this_run),
        "num_examples": records,
        "notes": notes,
    }


def _client_level(spends: list[LedgerEntry], config: RunConfig) -> dict[str, Any] | None:
    events = [e for e in spends if e.node_id == FEDERATION_NODE and e.guarantee == CLIENT_LEVEL]
    if not events:
        return None
    latest = events[-1]
    return {
        "guarantee": CLIENT_GUARANTEE,
        "epsilon": latest.epsilon,
        "delta": latest.delta,
        "relation": ADD_REMOVE,
        "accountant": latest.accountant,
        "noise_multiplier": latest.noise_multiplier,
        "sampling": config.client_sampling,
        "dp_guarantee": all(e.noise == SECRET_NOISE for e in events),
    }
