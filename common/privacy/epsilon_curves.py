"""ε after every event of one node, computed three ways for the audit.

* **claim**: the accountant and relation the entry names, at the entry's own δ, exactly as the
  writer computed it (`common.privacy.accounting`), so a claim can be checked to float
  precision. Format-1 entries claimed with Opacus RDP under add/remove-one.
* **PLD**: dp-accounting's PLD at its default discretization (1e-4, ten times finer than the
  claims'), under the relation that really holds for the guarantee (record-level:
  replace-one, because a node releases its record count; client-level: add/remove-one
  client), built independently of the writer's code path (every event as a subsampled
  Gaussian self-composed `steps` times, no shortcuts). Its *pessimistic* estimate (an upper
  bound) is what the report shows; its *optimistic* estimate (a lower bound on the true ε) is
  what a claim must not go below: a claim under it provably under-states ε.
* **RDP**: an upper bound from a second, independent implementation: for add/remove, Opacus's
  RDP accountant; for replace-one (which neither Opacus nor dp-accounting offer as RDP),
  fedssl's own Rényi divergence of the replace-one dominating pair of the Poisson-subsampled
  Gaussian, P = (1−q)N(0,σ²) + qN(1,σ²) against Q = (1−q)N(0,σ²) + qN(−1,σ²), integrated
  numerically in one dimension and converted to (ε, δ) with Opacus's conversion.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from dp_accounting.pld.privacy_loss_distribution import (
    PrivacyLossDistribution,
    from_gaussian_mechanism,
)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.special import logsumexp

from common.privacy.accounting import (
    ADD_REMOVE,
    LEGACY_RDP,
    NEIGHBOURS,
    PLD,
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    REPLACE_ONE,
    HistoryEntry,
    epsilon_of,
    legacy_rdp_epsilon,
)

CLAIM_TOLERANCE = 1e-6  # relative; writers compute exactly this, so only float noise is allowed
AUDIT_PLD_DISCRETIZATION = 1e-4  # dp-accounting's PLDAccountant default
ACCOUNTANTS = {
    "claimed": "written by the node: the accountant and relation its entry names, at the "
               f"entry's own δ (dp-accounting PLD, pessimistic, discretization "
               f"{PLD_DISCRETIZATION:g}; format-1 entries: Opacus RDP, add/remove-one)",
    "pld": "recomputed: dp-accounting PLD (pessimistic, discretization "
           f"{AUDIT_PLD_DISCRETIZATION:g}) under the relation that holds: record-level "
           "replace-one, client-level add/remove-one; a claim below its optimistic "
           "estimate (a lower bound on the true ε) under-states ε",
    "rdp": "recomputed, independent upper bound: RDP (replace-one: fedssl's numerical RDP of "
           "the replace-one dominating pair; add/remove: Opacus RDP)",
}


def claim_curve(events: Sequence[HistoryEntry], deltas: Sequence[float],
                accountants: Sequence[str], relations: Sequence[str]) -> list[float]:
    """ε after each event as its writer should have claimed it (event i's own δ, accountant
    and relation, over events 0..i)."""
    curve = []
    for i, (delta, accountant, relation) in enumerate(zip(deltas, accountants, relations,
                                                          strict=True)):
        history = events[: i + 1]
        if accountant == LEGACY_RDP:
            curve.append(legacy_rdp_epsilon(history, delta))
        elif accountant == PLD and relation in (REPLACE_ONE, ADD_REMOVE):
            curve.append(epsilon_of(history, delta, relation))
        else:
            curve.append(math.nan)  # unknown: the integrity check names it
    return curve


def pld_curve(events: Sequence[HistoryEntry], deltas: Sequence[float], relation: str,
              pessimistic: bool = True) -> list[float]:
    """ε after each event with dp-accounting's PLD at its default discretization, composed one
    event at a time (σ = 0 makes ε infinite from then on): an upper bound (`pessimistic`) or
    a lower bound on the true ε."""
    total: PrivacyLossDistribution | None = None
    non_private = False
    curve: list[float] = []
    for (sigma, rate, steps), delta in zip(events, deltas, strict=True):
        if steps > 0 and sigma == 0:
            non_private = True
        elif steps > 0 and not non_private:
            event = _audit_event_pld(float(sigma), float(rate), int(steps), relation,
                                     pessimistic)
            total = event if total is None else total.compose(event)
        curve.append(math.inf if non_private else 0.0 if total is None
                     else float(total.get_epsilon_for_delta(delta)))
    return curve


@functools.lru_cache(maxsize=512)
def _audit_event_pld(sigma: float, rate: float, steps: int, relation: str,
                     pessimistic: bool) -> PrivacyLossDistribution:
    """The audit's own event PLD: a Poisson-subsampled Gaussian (q = 1 included) composed
    `steps` times, without the writer's shortcuts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = from_gaussian_mechanism(
            sigma, sampling_prob=rate, value_discretization_interval=AUDIT_PLD_DISCRETIZATION,
            neighboring_relation=NEIGHBOURS[relation], pessimistic_estimate=pessimistic,
            use_connect_dots=pessimistic)  # connect-the-dots is pessimistic only
    return step.self_compose(steps)


def rdp_curve(events: Sequence[HistoryEntry], deltas: Sequence[float],
              relation: str) -> list[float]:
    """ε after each event from RDP (an upper bound), event i evaluated at `deltas[i]`."""
    total = np.zeros(len(RDP_ORDERS))
    spent = False
    curve = []
    with warnings.catch_warnings():
        # The best order sits at an end of RDP_ORDERS: the bound is looser, not wrong.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        for (sigma, rate, steps), delta in zip(events, deltas, strict=True):
            if steps > 0:
                if sigma == 0:
                    total = total + math.inf
                else:
                    total = total + _step_rdp(float(sigma), float(rate), relation) * int(steps)
                spent = True
            if not spent:
                curve.append(0.0)
            elif not np.isfinite(total).any():
                curve.append(math.inf)
            else:
                eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
                curve.append(float(eps))
    return curve


@functools.lru_cache(maxsize=4096)
def _step_rdp(sigma: float, rate: float, relation: str) -> np.ndarray:
    if relation == ADD_REMOVE:
        rdp = np.array(compute_rdp(q=rate, noise_multiplier=sigma, steps=1,
                                   orders=list(RDP_ORDERS)))
        rdp.setflags(write=False)  # shared by every caller in this process
        return rdp
    if relation == REPLACE_ONE:
        return replace_one_rdp(sigma, rate, RDP_ORDERS)
    raise ValueError(f"unknown neighbouring relation {relation!r}")


def replace_one_rdp(sigma: float, rate: float, orders: Sequence[float]) -> np.ndarray:
    """Rényi divergence D_α(P‖Q) of one Poisson-subsampled Gaussian step under replace-one.

    P = (1−q)N(0,σ²) + qN(1,σ²), Q = (1−q)N(0,σ²) + qN(−1,σ²) (sensitivity 1 in units of the
    clip norm; Q is P mirrored, so the divergence is the same in both directions). The
    integral ∫ P^α Q^(1−α) is evaluated in log space on a grid that covers where the
    integrand lives (left: where P's tail is; right: its mass moves out to x ≈ 2α−1 as α grows),
    with the trapezoid rule.
    At q = 1 it is the Gaussian's 2α/σ² exactly (tests check this).
    """
    result = np.empty(len(orders))
    log_keep, log_rate = (math.log1p(-rate) if rate < 1 else -math.inf), math.log(rate)
    for i, alpha in enumerate(orders):
        step = sigma / 50  # the trapezoid rule converges fast on such smooth integrands
        x = np.arange(-1 - 20 * sigma, 2 * alpha + 1 + 20 * sigma + step, step)

        def log_mixture(shift: float, x: np.ndarray = x) -> np.ndarray:
            centre = -0.5 * (x / sigma) ** 2
            shifted = -0.5 * ((x - shift) / sigma) ** 2
            return np.logaddexp(log_keep + centre, log_rate + shifted) \
                - math.log(sigma * math.sqrt(2 * math.pi))

        log_integrand = alpha * log_mixture(1.0) + (1 - alpha) * log_mixture(-1.0)
        # Trapezoid rule in log space: log Σ w_i f_i with end weights ½.
        weights = np.full(len(x), math.log(step))
        weights[[0, -1]] += math.log(0.5)
        log_integral = float(logsumexp(log_integrand + weights))
        result[i] = max(log_integral, 0.0) / (alpha - 1)
    result.setflags(write=False)
    return result


def claim_consistent(claimed: float, recomputed: float) -> bool:
    """Equal up to CLAIM_TOLERANCE (relative); infinite only equals infinite."""
    if math.isinf(recomputed) or math.isinf(claimed):
        return claimed == recomputed
    return abs(claimed - recomputed) <= CLAIM_TOLERANCE * max(abs(recomputed), 1e-12)


def claim_covers(claimed: float, lower_bound: float) -> bool:
    """The claim is at least a lower bound on the true ε (optimistic PLD): not provably an
    under-claim. Only float noise is allowed (1e-9)."""
    if math.isinf(lower_bound):
        return math.isinf(claimed)
    return claimed >= lower_bound - 1e-9
