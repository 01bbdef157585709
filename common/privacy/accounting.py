"""Privacy accounting: ε of an event history, and σ calibrated to the budget that is left.

An event history is Opacus's format, `[(noise_multiplier, sample_rate, steps), ...]`: plain
numbers that survive rounds and restarts in the ledger. Claims, calibration and budgets use one
accountant, dp-accounting's privacy-loss-distribution (PLD) accountant with its pessimistic
estimate, which is an upper bound on ε at any discretization; 1e-3 gives the same ε as the
library's default 1e-4 to four digits in fedssl's regimes at a tenth of the cost.

**Neighbouring relation.** ε is only meaningful for the relation that matches what is released:

* record-level (DP-SGD on a node): *replace-one*. A node releases its record count n (and the
  sample rate q = 1/⌈n/B⌉ and σ derived from it), so n is public and neighbouring data sets
  differ in one record's content. Under add/remove-one, releasing n exactly has no finite ε.
* client-level (DP-FedAvg on the server): *add/remove-one client*. The denominator is fixed in
  advance and nothing released depends on how many clients took part.

Opacus's RDP accountant (and dp-accounting's) supports only add/remove for Poisson-subsampled
Gaussians; the PLD accountant supports both. Ledgers written before this (format 1) claimed
add/remove with Opacus RDP: `legacy_rdp_epsilon` recomputes those claims for the audit.

Everything here is pure and cached per process: a PLD composition costs ~0.1 s, and every
client round and every server round would otherwise pay it again for the same history.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

from dp_accounting import NeighboringRelation
from dp_accounting.pld.privacy_loss_distribution import (
    PrivacyLossDistribution,
    from_gaussian_mechanism,
)

HistoryEntry = tuple[float, float, int]

PLD = "pld"  # the accountant of every claim fedssl writes
LEGACY_RDP = "rdp"  # format-1 ledger entries: Opacus RDP, add/remove-one
ACCOUNTANT = PLD
REPLACE_ONE = "replace-one"
ADD_REMOVE = "add-remove"
PLD_DISCRETIZATION = 1e-3
COARSE_DISCRETIZATION = 1e-2  # calibration's first pass only; never a claim
# Opacus's default RDP orders stop at 63; few-step, small-σ regimes want higher orders, and a
# too-short range only loosens (never breaks) the bound. Legacy claims were computed with these.
RDP_ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 128, 160, 200, 256]
)
# Calibration: σ is searched to this relative precision, always rounded towards more noise.
SIGMA_PRECISION = 1e-3
MAX_SIGMA = 1e4  # a target that needs more noise than this is refused as unreachable
MIN_SIGMA = 1e-3  # the search stops here (a target this loose is beyond any sane setting)

NEIGHBOURS = {REPLACE_ONE: NeighboringRelation.REPLACE_ONE,
              ADD_REMOVE: NeighboringRelation.ADD_OR_REMOVE_ONE}


def epsilon_of(history: Sequence[HistoryEntry], delta: float, relation: str) -> float:
    """ε(δ) of everything in `history` under `relation` (0 when nothing was spent).

    σ = 0 in an event with steps makes ε infinite (no noise, no guarantee).
    """
    events = _events(history)
    if not events:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in events):
        return math.inf
    return float(_history_pld(events, relation).get_epsilon_for_delta(delta))


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, relation: str,
    prior: Sequence[HistoryEntry] = (), repeats: int = 1,
) -> float | None:
    """Smallest σ (to SIGMA_PRECISION, rounded up) such that `prior` plus `repeats` events of
    `steps` steps at rate q spend at most `target_epsilon`; None when `prior` alone already
    reaches it (or it would take more than MAX_SIGMA).

    The result always satisfies `epsilon_of([*prior, *[(σ, q, steps)] * repeats], δ, relation)
    ≤ target`, evaluated with exactly the function that claims and budgets use. A node plans
    its remaining rounds as `repeats` events of one round's steps, the way its ledger will
    record them, so the same plan evaluates to the same number next round.
    """
    return _calibrate(float(target_epsilon), float(delta), float(sample_rate), int(steps),
                      relation, _events(prior), int(repeats))


def _events(history: Sequence[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    """Typed events with steps (zero-step events spend nothing)."""
    return tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)


@functools.lru_cache(maxsize=256)
def _calibrate(target: float, delta: float, rate: float, steps: int, relation: str,
               prior: tuple[HistoryEntry, ...], repeats: int) -> float | None:
    if steps <= 0 or repeats <= 0:
        raise ValueError("calibration needs at least one planned step")

    def spent(sigma: float, discretization: float = PLD_DISCRETIZATION) -> float:
        events = (*prior, *[(sigma, rate, steps)] * repeats)
        return float(_history_pld(events, relation, discretization)
                     .get_epsilon_for_delta(delta))

    if epsilon_of(prior, delta, relation) >= target:
        return None
    # A coarse discretization (10x cheaper) finds the neighbourhood; the claim's own
    # discretization then decides, so the result holds for exactly what is claimed.
    rough = _bisect(lambda sigma: spent(sigma, COARSE_DISCRETIZATION) > target, 0.0, 1.0)
    if rough is None:
        return None
    low, high = rough * (1 - 5 * SIGMA_PRECISION), rough
    while spent(high) > target:  # the coarse answer is (almost always) already enough
        low, high = high, high * (1 + 5 * SIGMA_PRECISION)
        if high > MAX_SIGMA:
            return None
    if spent(low) <= target:  # not bracketed after all: search the whole range below
        low = 0.0
    return _bisect(lambda sigma: spent(sigma) > target, low, high)


def _bisect(too_small: Callable[[float], bool], low: float, high: float) -> float | None:
    """Smallest σ above `low` with not too_small(σ), to SIGMA_PRECISION (rounded up towards
    more noise); `high` doubles until it qualifies (None past MAX_SIGMA)."""
    while too_small(high):
        low, high = high, high * 2
        if high > MAX_SIGMA:
            return None
    while high - low > SIGMA_PRECISION * high and high > MIN_SIGMA:
        middle = (low + high) / 2
        if too_small(middle):
            low = middle
        else:
            high = middle
    return high


_PREFIXES: dict[tuple[str, float, tuple[HistoryEntry, ...]], PrivacyLossDistribution] = {}
_MAX_PREFIXES = 512


def _history_pld(events: tuple[HistoryEntry, ...], relation: str,
                 discretization: float = PLD_DISCRETIZATION) -> PrivacyLossDistribution:
    """PLD of the composition of `events`. Every prefix is cached, so a history that grows by
    one event per round (or an audit walking a node's events) costs one composition per event."""
    done = len(events)
    while done > 0 and (relation, discretization, events[:done]) not in _PREFIXES:
        done -= 1
    total = _PREFIXES[(relation, discretization, events[:done])] if done else None
    for i in range(done, len(events)):
        step = event_pld(*events[i], relation, discretization)
        total = step if total is None else total.compose(step)
        if len(_PREFIXES) >= _MAX_PREFIXES:
            _PREFIXES.pop(next(iter(_PREFIXES)))  # oldest first
        _PREFIXES[(relation, discretization, events[: i + 1])] = total
    assert total is not None, "an empty history has no PLD"
    return total


@functools.lru_cache(maxsize=1024)
def event_pld(sigma: float, rate: float, steps: int, relation: str,
              discretization: float) -> PrivacyLossDistribution:
    """PLD of `steps` Poisson-subsampled Gaussian steps (a plain Gaussian when q = 1) under
    `relation`, at a value discretization of `discretization` (cached)."""
    if relation not in NEIGHBOURS:
        raise ValueError(f"unknown neighbouring relation {relation!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dp-accounting warns about truncation it accounts for
        if rate >= 1:
            # Self-composing a Gaussian n times is a Gaussian with σ/√n: exact and cheap.
            return from_gaussian_mechanism(sigma / math.sqrt(steps),
                                           neighboring_relation=NEIGHBOURS[relation],
                                           value_discretization_interval=discretization)
        step = from_gaussian_mechanism(sigma, sampling_prob=rate,
                                       neighboring_relation=NEIGHBOURS[relation],
                                       value_discretization_interval=discretization)
        return step.self_compose(steps)


def legacy_rdp_epsilon(history: Sequence[HistoryEntry], delta: float) -> float:
    """What a format-1 ledger entry claimed: Opacus RDP, add/remove-one, fedssl's orders."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    events = _events(history)
    if not events:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in events):
        return math.inf
    rdp = sum([_legacy_rdp_per_step(s, q) * n for s, q, n in events])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _legacy_rdp_per_step(sigma: float, rate: float):  # type: ignore[no-untyped-def]
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1,
                                   orders=list(RDP_ORDERS))
    rdp.setflags(write=False)
    return rdp
