"""ε after every event of one node, recomputed with two independent accountants.

* RDP: Opacus's accountant with fedssl's RDP orders, exactly as nodes compute their claims
  (`common.privacy_accounting.epsilon_of`), so a claim can be checked to float precision.
* PLD: Google's dp-accounting privacy-loss-distribution accountant, a separate implementation
  and typically the tighter bound.
Both are composed one event at a time with per-mechanism caches, so a whole curve costs about
one composition per event instead of one full recomputation per event.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.pld.privacy_loss_distribution import (
    PrivacyLossDistribution,
    from_gaussian_mechanism,
    identity,
)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from common.privacy_accounting import RDP_ORDERS, HistoryEntry

CLAIM_TOLERANCE = 1e-6  # relative; nodes compute exactly this, so only float noise is allowed
PLD_DISCRETIZATION = 1e-4  # dp-accounting's PLDAccountant default (its reference numbers)
ACCOUNTANTS = {
    "claimed": "written by the node: Opacus RDP accountant at the entry's own δ",
    "rdp": "recomputed: Opacus RDP accountant (fedssl RDP orders), add/remove-one adjacency",
    "pld": "recomputed: dp-accounting PLD accountant (pessimistic, discretization "
           f"{PLD_DISCRETIZATION:g}), add/remove-one adjacency",
}


def rdp_curve(events: Sequence[HistoryEntry], deltas: Sequence[float]) -> list[float]:
    """ε after each event with Opacus's RDP accountant, event i evaluated at `deltas[i]`.

    Bit-identical to `epsilon_of(events[:i+1], deltas[i])`, which is how nodes claim: the same
    per-event `compute_rdp` arrays summed in the same order, but each event's RDP is computed
    once (one (σ, q) costs up to ~0.1 s; a 200-round history would otherwise cost seconds).
    """
    total = np.zeros(len(RDP_ORDERS))  # 0.0 + x == x: still bit-identical to Opacus's sum
    spent = False
    curve = []
    with warnings.catch_warnings():
        # The best order sits at an end of RDP_ORDERS: the bound is looser, not wrong.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        for (sigma, rate, steps), delta in zip(events, deltas, strict=True):
            if steps > 0:  # adding 0·RDP changes nothing, except ∞·0 = NaN when σ = 0
                total = total + _step_rdp(float(sigma), float(rate)) * int(steps)
                spent = True
            if not spent:  # nothing spent yet is ε = 0, as epsilon_of([]) says
                curve.append(0.0)
                continue
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
