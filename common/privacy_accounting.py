"""Record-level privacy accounting: σ calibration and ε from a persisted step history.

History is Opacus's own format, `[(noise_multiplier, sample_rate, steps), ...]`, so it survives
rounds and restarts as plain numbers. fedssl calibrates and reports with the RDP accountant:
it is an upper bound, and calibrating with the same accountant that reports keeps the two
consistent (PRV would report ~10% lower ε for the same σ).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANT = "rdp"
# Opacus's default RDP orders stop at 63; few-step, small-σ regimes want higher orders, and
# a too-short range only loosens (never breaks) the bound. Used for calibration and reporting.
RDP_ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 128, 160, 200, 256]
)
HistoryEntry = tuple[float, float, int]


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Smallest σ such that `steps` Poisson-subsampled Gaussian steps spend ≤ target ε."""
    with warnings.catch_warnings():
        # The bisection probes very large σ, where the best RDP order is past any finite
        # range; that only loosens the probe's bound and does not affect the chosen σ.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=ACCOUNTANT,
            epsilon_tolerance=0.005,
            alphas=RDP_ORDERS,
        )
    return float(sigma)


def make_accountant(history: Sequence[HistoryEntry]) -> RDPAccountant:
    """An RDP accountant that already holds `history` (earlier rounds' spend)."""
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return accountant


def epsilon_of(history: Sequence[HistoryEntry], delta: float) -> float:
    """ε(δ) of everything in `history` (0 when nothing was spent)."""
    if not history:
        return 0.0
    return float(make_accountant(history).get_epsilon(delta, alphas=RDP_ORDERS))


def merge_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Combine consecutive entries with equal (σ, q), as Opacus does step by step."""
    merged: list[HistoryEntry] = []
    for sigma, rate, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return merged
