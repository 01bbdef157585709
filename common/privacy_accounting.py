"""Record-level privacy accounting: σ calibration and ε from a persisted step history.

History is Opacus's own format, `[(noise_multiplier, sample_rate, steps), ...]`, so it survives
rounds and restarts as plain numbers. fedssl calibrates and reports with the RDP accountant:
it is an upper bound, and calibrating with the same accountant that reports keeps the two
consistent (PRV would report ~10% lower ε for the same σ).

Both functions are pure and cached per process. Opacus evaluates the RDP series in pure Python
(~0.5–1 s per history entry at these orders, seconds per calibration), and every client round
and every server round used to pay it again for the same (σ, q). `epsilon_of` caches the RDP of
one step per (σ, q) and scales it by the step count exactly as Opacus' `compute_rdp` does
(`rdp * steps`), so its result is bit-for-bit the RDPAccountant's (tests/test_privacy_accounting).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANT = "rdp"
# Opacus's default RDP orders stop at 63; few-step, small-σ regimes want higher orders, and
# a too-short range only loosens (never breaks) the bound. Used for calibration and reporting.
RDP_ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 128, 160, 200, 256]
)
HistoryEntry = tuple[float, float, int]


@functools.lru_cache(maxsize=1024)
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
    """ε(δ) of everything in `history` (0 when nothing was spent).

    The same arithmetic as `RDPAccountant(history).get_epsilon(delta, RDP_ORDERS)`, in the same
    order, with the per-step RDP of each (σ, q) computed once per process.
    """
    if not history:
        return 0.0
    rdp = sum([rdp_per_step(float(s), float(q)) * int(n) for s, q, n in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at every order of RDP_ORDERS (read-only)."""
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                   orders=list(RDP_ORDERS))
    rdp.setflags(write=False)  # shared by every caller in this process
    return rdp


def merge_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Combine consecutive entries with equal (σ, q), as Opacus does step by step."""
    merged: list[HistoryEntry] = []
    for sigma, rate, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return merged
