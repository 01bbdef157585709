"""Empirical lower bound on ε from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

**The game.** m canaries each get a secret fair coin S_i: included in the training data (or in
whatever is released) when it lands "in", left out otherwise. After the run an auditor scores
every canary, then guesses "in" for the k₊ highest scores, "out" for the k₋ lowest, and abstains
on the rest. Of the r = k₊ + k₋ guesses, v turn out correct. If the run is (ε, δ)-DP with respect
to each coin (neighbours differ in one S_i), many correct guesses are implausible, so a large v
refutes small ε: the largest ε still refuted at confidence 1 − β is the lower bound.

**The theorem** (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023, arXiv:2305.08846: the (ε, δ) bound of Corollary 5.4 in the arXiv v1 numbering,
and the p-value / bisection procedure of its Appendix D). Let W be the number of correct guesses
out of r, m canaries, and W' ~ Binomial(r, q) with q = e^ε / (1 + e^ε), the accuracy of ε-DP
randomized response. If the run is (ε, δ)-DP then, for every v,

    P[W ≥ v] ≤ P[W' ≥ v] + 2 m δ · max_{i = 1..m} P[v − i ≤ W' < v] / i.

With δ = 0 this is the pure-ε statement P[W ≥ v] ≤ P[W' ≥ v]. The δ term counts every canary
(m, not r: abstentions do not buy it back). For i > v the numerator stays P[W' < v] while i
grows, so the maximum is over i = 1..v, which is what `one_run_p_value` evaluates.

*Provenance.* The paper's PDF was not readable from this machine. The statement above is the
one every public implementation of the paper's Appendix D code computes (e.g. DeepMind's
jax_privacy `auditing._one_run_p_value`, which names the same paper); it is written here
independently from that statement, not copied. The tests pin two ε values the paper prints
(Appendix D's worked example and a §7 result, as transcribed by a third-party repository), and
this implementation reproduces both to the printed three decimals.

**From p-value to a bound, and why bisection is safe.** The right-hand side, f_ε(v), is a
p-value for "the run is (ε, δ)-DP": for any tail bound f (decreasing in v or not), with
v* the smallest v having f(v) ≤ β, P[f(W) ≤ β] ≤ P[W ≥ v*] ≤ f(v*) ≤ β. A run that is
(ε_true, δ)-DP is (ε', δ)-DP for every ε' ≥ ε_true, so the infimum of f_ε' over those ε' is a
tail bound too; hence the supremum of the refuted ε (those with f_ε(v) ≤ β) exceeds ε_true with
probability at most β, and so does any refuted ε below it. The bisection keeps its low end
refuted at every step and returns it: the answer is valid whether or not f_ε(v) is monotone in
ε. For δ = 0 it is (the Binomial tail grows with q); for δ > 0 the paper's algorithm assumes
so, and if it ever failed the bisection would only return a smaller, still valid, bound.

**Choosing k after looking.** Picking (k₊, k₋) as the pair with the largest bound is a choice
made after seeing the outcome: `best_lower_bound` tests every pair of its grid at β / |grid|
(a union bound), so the maximum it reports still holds at confidence 1 − β. (The paper's
experiments report the best of several k without this correction.)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom

EPSILON_TOLERANCE = 1e-6  # bisection stops when the bracket is this narrow
EPSILON_CEILING = 1024.0  # expit(ε) is exactly 1.0 in float64 long before this: p-value 1


@dataclass(frozen=True)
class AuditGuesses:
    """The outcome of one audit: `guesses` non-abstentions, `correct` of them right, out of
    `canaries` coins in all (the m of the δ term)."""

    guesses: int
    correct: int
    canaries: int

    def __post_init__(self) -> None:
        _check_counts(self.guesses, self.correct, self.canaries)


def _count(name: str, value: object) -> int:
    """An integer count (numpy integers welcome; bool and float refused, so that a mask sum or
    an average never passes for a count)."""
    if isinstance(value, (bool, np.bool_)):
        # ValueError, not TypeError: the API promises one exception type for every bad input.
        raise ValueError(f"{name} must be an integer count, got the bool {value!r}")  # noqa: TRY004
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer count, got {value!r}") from None


def _check_counts(guesses: object, correct: object, canaries: object) -> tuple[int, int, int]:
    r, v, m = _count("guesses", guesses), _count("correct", correct), _count("canaries", canaries)
    if m < 1:
        raise ValueError(f"canaries must be at least 1, got {m}")
    if not 0 <= v <= r <= m:
        raise ValueError(
            f"need 0 <= correct <= guesses <= canaries, got correct={v}, guesses={r}, "
            f"canaries={m}")
    return r, v, m


def _check_probability(name: str, value: object, *, zero_ok: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    value = float(value)
    low_ok = value >= 0.0 if zero_ok else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if zero_ok else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def one_run_p_value(guesses: int, correct: int, canaries: int, epsilon: float,
                    delta: float) -> float:
    """P-value of `correct` right guesses out of `guesses` if the run were (ε, δ)-DP: the
    theorem's right-hand side, capped at 1. Small values refute (ε, δ)."""
    r, v, m = _check_counts(guesses, correct, canaries)
    delta = _check_probability("delta", delta, zero_ok=True)
    if (isinstance(epsilon, (bool, np.bool_))
            or not isinstance(epsilon, (int, float, np.integer, np.floating))
            or not math.isfinite(epsilon) or epsilon < 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return _p_value(r, v, m, float(epsilon), delta)


def _p_value(r: int, v: int, m: int, epsilon: float, delta: float) -> float:
    """The theorem's bound, inputs already validated."""
    if v == 0:
        return 1.0  # "at least 0 correct" is certain
    q = float(expit(epsilon))  # e^ε/(1+e^ε) without overflow at large ε
    tail = float(binom.sf(v - 1, r, q))  # P[W' ≥ v]
    if delta == 0.0:
        return min(tail, 1.0)
    # P[v − i ≤ W' < v] for i = 1..v: the pmf at v−1, v−2, …, 0, accumulated.
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
    worst = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * worst, 1.0)


def epsilon_lower_bound(guesses: int, correct: int, canaries: int, delta: float,
                        beta: float = 0.05) -> float:
    """The largest ε refuted at confidence 1 − β (to `EPSILON_TOLERANCE`, rounded down), or
    0.0 when even ε = 0 is not refuted and nothing can be concluded."""
    r, v, m = _check_counts(guesses, correct, canaries)
    delta = _check_probability("delta", delta, zero_ok=True)
    beta = _check_probability("beta", beta, zero_ok=False)

    def refuted(epsilon: float) -> bool:
        return _p_value(r, v, m, epsilon, delta) <= beta

    if not refuted(0.0):
        return 0.0
    low, high = 0.0, 1.0  # invariant: `low` refuted, `high` not (once bracketed)
    while refuted(high):
        low, high = high, 2.0 * high
        if high > EPSILON_CEILING:  # unreachable: the p-value is exactly 1 there
            raise RuntimeError(f"p-value still <= beta at epsilon={low}: cannot bracket")
    while high - low > EPSILON_TOLERANCE:
        middle = 0.5 * (low + high)
        if refuted(middle):
            low = middle
        else:
            high = middle
    return low


def guesses_from_scores(scores: np.ndarray, included: np.ndarray, k_pos: int,
                        k_neg: int) -> AuditGuesses:
    """Guess "in" for the `k_pos` highest scores and "out" for the `k_neg` lowest; count the
    right ones against the coins in `included` (bool, or 0/1).

    Which canaries are guessed depends on the scores alone; ties are broken by position, which
    the coins do not influence, so the guesses stay a function of the released output.
    """
    scores, included = _check_audit_arrays(scores, included)
    m = scores.size
    k_pos, k_neg = _count("k_pos", k_pos), _count("k_neg", k_neg)
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > m:
        raise ValueError(
            f"need k_pos, k_neg >= 0 and k_pos + k_neg <= {m} canaries, got k_pos={k_pos}, "
            f"k_neg={k_neg}")
    order = np.argsort(scores, kind="stable")  # ascending
    right_in = int(np.count_nonzero(included[order[m - k_pos:]]))  # k_pos = 0: empty slice
    right_out = int(np.count_nonzero(~included[order[:k_neg]]))
    return AuditGuesses(guesses=k_pos + k_neg, correct=right_in + right_out, canaries=m)


def _check_audit_arrays(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    scores = np.asarray(scores)
    included = np.asarray(included)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if included.shape != scores.shape:
        raise ValueError(
            f"included must have the shape of scores {scores.shape}, got {included.shape}")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype,
                                                                   np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (a NaN would sort to an arbitrary end)")
    if included.dtype != np.bool_:
        if not np.issubdtype(included.dtype, np.number) or not np.all(
                (included == 0) | (included == 1)):
            raise ValueError("included must hold the coins as bool or 0/1")
        included = included == 1
    return scores.astype(np.float64, copy=False), included


def best_lower_bound(scores: np.ndarray, included: np.ndarray, delta: float, beta: float,
                     k_grid: Sequence[tuple[int, int]]) -> tuple[float, int, int]:
    """The largest bound over the (k_pos, k_neg) pairs of `k_grid`, each tested at
    β / (number of distinct pairs) so that picking the best after looking still holds at
    confidence 1 − β. Returns (bound, k_pos, k_neg); the first pair of the grid on ties
    (including the all-zero case)."""
    pairs = [(_count("k_pos", k_pos), _count("k_neg", k_neg)) for k_pos, k_neg in k_grid]
    if not pairs:
        raise ValueError("k_grid must hold at least one (k_pos, k_neg) pair")
    beta = _check_probability("beta", beta, zero_ok=False)
    distinct = list(dict.fromkeys(pairs))  # a repeated pair is the same test, paid once
    per_test_beta = beta / len(distinct)
    best = (-1.0, 0, 0)
    for k_pos, k_neg in distinct:
        outcome = guesses_from_scores(scores, included, k_pos, k_neg)
        bound = epsilon_lower_bound(outcome.guesses, outcome.correct, outcome.canaries,
                                    delta, per_test_beta)
        if bound > best[0]:
            best = (bound, k_pos, k_neg)
    return best
