"""The privacy section of every run output (summary.json, report.md, the console, sweeps),
built from one source: the run's ledger, never from client metrics.

Per node it states the node's own claim (its lifetime ε, at its own δ, under replace-one
neighbours) and recomputes from the ledger what can be recomputed: this run's ε, and the
lifetime ε at the run's δ so that nodes can be compared at one δ. A node whose latest spend the
server may not have seen (server/ledger_sync.py) is shown as a lower bound ("≥") with the
reason; a sampled node never heard from at all is listed as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from common.run_layout import LEDGER_FILE
from server.ledger_sync import LedgerCoverage

RECORD_GUARANTEE = "record-level DP per client (Opacus DP-SGD, Poisson sampling)"
CLIENT_GUARANTEE = "client-level DP for the federation (DP-FedAvg)"
NO_GUARANTEE = ("NO DP GUARANTEE: reproducible-noise was on, so the DP noise and sampling can "
                "be recomputed from the run seed")


def privacy_section(
    ledger: PrivacyLedger, coverage: LedgerCoverage, config: RunConfig, run_ids: set[str],
    records: Mapping[str, int], refusals: int,
    secure_rounds: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """summary.json's `privacy` object (docs/run-dir.md); `secure_rounds`: one fact per round
    under secure aggregation, from metrics.jsonl (`secure_round_facts`)."""
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
        "secure_aggregation": secure_aggregation_view(spends, config, secure_rounds),
        "ledger": {"file": LEDGER_FILE, **ledger.head()},
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


def secure_round_facts(line: Mapping[str, Any]) -> dict[str, Any]:
    """What the privacy statement needs of one metrics.jsonl round under secure aggregation:
    reconstruction threshold t, contributors k (masked vectors in the unmasked sum; 0 when
    the protocol halted), and whether a client-level ledger event accounts for the round.
    A round without a secure-aggregation record has t = k = None (then nothing is claimed)."""
    secure = [a["secure_aggregation"] for a in line.get("attempts", [])
              if isinstance(a, Mapping) and "secure_aggregation" in a]
    facts = secure[-1] if secure else {}
    return {
        "round": line.get("round"),
        "sampled": line.get("clients_sampled"),
        "threshold": facts.get("threshold"),
        "contributors": facts.get("contributors"),
        "client_noise": facts.get("client_noise"),
        "client_level_event": line.get("client_level_epsilon") is not None,
    }


SERVER_SEES_SUM = ("Flower SecAgg+: the server learns only the sum of each round's updates, "
                   "unmasked only when at least t (reconstruction threshold) sampled clients "
                   "contribute; honest-but-curious server assumed (docs/secure-aggregation.md)")


def secure_aggregation_view(spends: list[LedgerEntry], config: RunConfig,
                            rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Against whom the client-level ε holds under secure aggregation, and on what assumption.

    Not in the ledger: a ledger entry's fields are all hashed and recomputed by `fedssl audit`
    (mechanism, z, q, steps, δ, ε) and none holds an assumption; the ε of the client-level
    event is the same in both noise modes, only who it holds against differs, and that
    depends on each round's t and contributors, which metrics.jsonl records.

    Conservative by construction: the claim "holds against the server" needs client-noise =
    distributed, secret noise, a secure-aggregation record for every round, at least t
    contributors in every round whose sum was unmasked, and a ledger event for every such
    round. Against the server, which chose each round's sample, Poisson sampling amplifies
    nothing: `epsilon_against_server` composes the same events with q = 1.
    """
    if not config.secure_aggregation:
        return None
    events = [e for e in spends if e.node_id == FEDERATION_NODE and e.guarantee == CLIENT_LEVEL]
    mode = config.client_noise if config.client_dp else None
    per_round = [dict(r) for r in rounds]
    unknown = [r["round"] for r in per_round if r["threshold"] is None
               or r["contributors"] is None]
    known = [r for r in per_round if r["round"] not in unknown]
    halted = [r["round"] for r in known if r["contributors"] == 0]
    unmasked = [r for r in known if r["contributors"] > 0]
    below = [r["round"] for r in unmasked if r["contributors"] < r["threshold"]]
    view: dict[str, Any] = {
        "protocol": SERVER_SEES_SUM,
        "client_noise": mode,
        "rounds": per_round,
        "halted_rounds": halted,
        "rounds_without_record": unknown,
        "rounds_below_threshold": below,
        "client_level_against_server": False,
        "tolerated_colluders": None,
        "epsilon_against_server": None,
    }
    if mode is None:
        view["statement"] = (
            "No client-level DP in this run: each round's sum of updates is unmasked to the "
            "server without client-level noise (record-level DP-SGD still protects each "
            "record).")
        return view
    if mode == "server":
        view["statement"] = (
            "Client-level noise is added by the server (client-noise=server) after it has "
            "unmasked the sum: the client-level ε holds only against those who see the "
            "aggregate and the released model, NOT against the server, which sees each "
            "round's sum without that noise (but never one client's update).")
        return view
    z = config.client_noise_multiplier
    unaccounted = [r["round"] for r in unmasked if not r["client_level_event"]]
    view["rounds_unmasked_without_ledger_event"] = unaccounted
    secret = all(e.noise == SECRET_NOISE for e in events)
    if unmasked and not below:
        view["tolerated_colluders"] = min(r["contributors"] - r["threshold"] for r in unmasked)
    if not below and not unknown:
        # Same events (and any sum the server saw without one), without subsampling.
        history = [(e.noise_multiplier, 1.0, e.steps) for e in events]
        history += [(z, 1.0, 1)] * len(unaccounted)
        view["epsilon_against_server"] = epsilon_of(history, config.delta, ADD_REMOVE)
    holds = secret and not unknown and not below and not unaccounted
    view["client_level_against_server"] = holds
    parts = [
        ("Client-level noise is distributed (client-noise=distributed): every contributing "
         f"node adds N(0, (zS)²/t) with z = {z:g}, so a sum of k ≥ t contributions carries "
         "noise std zS·√(k/t) ≥ zS.")]
    if unmasked:
        parts.append(
            "Per round (contributors k / threshold t): " + ", ".join(
                f"round {r['round']}: {r['contributors']}/{r['threshold']}" for r in unmasked)
            + ".")
    if halted:
        parts.append(
            f"Round(s) {', '.join(map(str, halted))}: secure aggregation halted (fewer than t "
            "contributions): nothing was unmasked, nothing released, no client-level ε spent.")
    if holds and unmasked:
        colluders = view["tolerated_colluders"]
        parts.append(
            f"Every sum the server saw had k ≥ t, so the client-level guarantee holds against "
            f"the server too, provided it is honest-but-curious and at most {colluders} "
            f"sampled client(s) collude with it (fewer than k − t + 1 in every round); c more "
            "colluders can subtract their shares, leaving noise multiplier z·√((k−c)/t) < z, "
            "and the claim then does not hold against them.")
        if config.client_sampling == "poisson":
            parts.append(
                "The server chose each round's Poisson sample, so against it subsampling "
                f"amplifies nothing: ε against the server is "
                f"{view['epsilon_against_server']:.3f} (the same events with q = 1), not the "
                "amplified client-level ε.")
        else:
            parts.append(f"ε against the server: {view['epsilon_against_server']:.3f} (the "
                         "claimed client-level ε; fixed sampling claims no amplification).")
    elif holds:
        parts.append("No round's sum was unmasked: the server saw no aggregate.")
    else:
        why = []
        if not secret:
            why.append("the client-level noise was reproducible (no DP guarantee)")
        if unknown:
            why.append(f"round(s) {', '.join(map(str, unknown))} have no secure-aggregation "
                       "record of t and contributors")
        if below:
            worst = min((r for r in unmasked if r["round"] in below),
                        key=lambda r: r["contributors"] / r["threshold"])
            why.append(
                f"round(s) {', '.join(map(str, below))} were unmasked with fewer than t "
                f"contributions (round {worst['round']}: noise multiplier only "
                f"z·√(k/t) = {z * (worst['contributors'] / worst['threshold']) ** 0.5:.3f})")
        if unaccounted:
            why.append(f"round(s) {', '.join(map(str, unaccounted))} were unmasked to the "
                       "server but have no client-level ledger event (skipped after "
                       "unmasking); ε against the server above counts them")
        parts.append("The claimed client-level ε does NOT hold against the server: "
                     + "; ".join(why) + ".")
    view["statement"] = " ".join(parts)
    return view
