"""The one-run ε lower bound (common/privacy/one_run_bound.py): sound on a Gaussian mechanism of
known ε, equal to an independent scipy computation when δ = 0, the paper's printed values when
δ > 0, monotone where it must be, and strict about its inputs."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom, norm

from common.privacy.one_run_bound import (
    AuditGuesses,
    best_lower_bound,
    epsilon_lower_bound,
    guesses_from_scores,
    one_run_p_value,
)

DELTA = 1e-5
BETA = 0.05


def _true_epsilon(sigma: float, delta: float) -> float:
    """ε of one Gaussian mechanism (sensitivity 1) at δ, analytic (Balle & Wang 2018)."""
    return float(dp_accounting.get_epsilon_gaussian(sigma, delta))


def _gaussian_run(m: int, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """The idealised audit: canary i releases S_i + N(0, σ²), and its score is that release."""
    included = rng.random(m) < 0.5
    return included + sigma * rng.standard_normal(m), included


def _symmetric_grid(m: int) -> list[tuple[int, int]]:
    return [(k, k) for k in (m // 100, m // 20, m // 10, m // 4, m // 2) if k > 0]


def test_true_epsilon_of_the_gaussian_agrees_three_ways():
    """Analytic ε, the PLD accountant's ε, and Balle & Wang's closed-form δ(ε) agree."""
    for sigma in (0.6, 1.0, 2.0, 3.7):
        analytic = _true_epsilon(sigma, DELTA)
        pld = from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1.0,
                                      value_discretization_interval=1e-4)
        assert pld.get_epsilon_for_delta(DELTA) == pytest.approx(analytic, abs=2e-3)
        # δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ) (Balle & Wang 2018, Thm 8).
        closed = (norm.cdf(0.5 / sigma - analytic * sigma)
                  - math.exp(analytic) * norm.cdf(-0.5 / sigma - analytic * sigma))
        assert closed == pytest.approx(DELTA, rel=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_bound_never_exceeds_the_true_epsilon(sigma):
    true_eps = _true_epsilon(sigma, DELTA)  # σ=1: ε≈4.4; σ=2: ε≈2.0
    rng = np.random.default_rng(20231 + int(10 * sigma))
    bounds = []
    for _ in range(50):
        scores, included = _gaussian_run(1000, sigma, rng)
        bound, _, _ = best_lower_bound(scores, included, DELTA, BETA, _symmetric_grid(1000))
        bounds.append(bound)
    assert max(bounds) <= true_eps
    # Not vacuous: the audit sees a good part of the leakage even at m = 1000.
    assert np.mean(bounds) >= 0.25 * true_eps


def test_more_canaries_come_closer():
    sigma = 2.0
    true_eps = _true_epsilon(sigma, DELTA)
    rng = np.random.default_rng(7)
    means = {}
    for m, trials in ((1000, 10), (10_000, 5)):
        found = [best_lower_bound(*_gaussian_run(m, sigma, rng), DELTA, BETA,
                                  _symmetric_grid(m))[0] for _ in range(trials)]
        assert max(found) <= true_eps
        means[m] = float(np.mean(found))
    assert means[10_000] > means[1000]
    assert means[10_000] >= 0.4 * true_eps


def test_a_mechanism_leaking_more_than_claimed_is_caught():
    """The soundness assertion can fail: release with σ = 0.6 (ε ≈ 8) while claiming the ε of
    σ = 3.7 (≈ 1), and the lower bound lands above the claim."""
    claimed = _true_epsilon(3.7, DELTA)
    rng = np.random.default_rng(3)
    scores, included = _gaussian_run(1000, 0.6, rng)
    bound, _, _ = best_lower_bound(scores, included, DELTA, BETA, _symmetric_grid(1000))
    assert bound > claimed


def test_all_correct_bound_grows_with_guesses_up_to_the_cap():
    m = 1000
    bounds = [epsilon_lower_bound(r, r, m, DELTA, BETA) for r in (5, 10, 50, 100, 500, 1000)]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    # The cap: r = m guesses, all right, δ = 0 refutes ε while q^m ≤ β, q = e^ε/(1+e^ε).
    q = BETA ** (1 / m)
    cap = math.log(q / (1 - q))
    assert epsilon_lower_bound(m, m, m, 0.0, BETA) == pytest.approx(cap, abs=1e-5)
    assert bounds[-1] <= cap  # δ > 0 only weakens the evidence
    assert cap == pytest.approx(5.81, abs=0.01)  # m = 1000 cannot certify more than ≈ 5.8


def test_bound_is_monotone_in_correct_guesses_and_delta():
    m, r = 1000, 200
    bounds = [epsilon_lower_bound(r, v, m, DELTA, BETA) for v in range(r + 1)]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    assert bounds[r // 2] == 0.0  # half right is what coin flipping gets
    assert bounds[-1] > bounds[150] > 0.0
    by_delta = [epsilon_lower_bound(r, 170, m, d, BETA) for d in (0.0, 1e-6, 1e-5, 1e-4)]
    assert all(a >= b for a, b in itertools.pairwise(by_delta))
    assert by_delta[0] > by_delta[-1]


@pytest.mark.parametrize("r,v", [(100, 75), (50, 50), (1000, 600), (20, 16)])
def test_pure_epsilon_equals_an_independent_binomial_inversion(r, v):
    """δ = 0: the ε at which P[Binomial(r, e^ε/(1+e^ε)) ≥ v] = β, found by brentq."""
    expected = brentq(lambda eps: binom.sf(v - 1, r, expit(eps)) - BETA, 0.0, 50.0,
                      xtol=1e-10)
    assert epsilon_lower_bound(r, v, 10 * r, 0.0, BETA) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("m,r,v,delta,printed", [
    (1000, 100, 75, 1e-4, 0.673),  # arXiv:2305.08846v1, Appendix D's worked example
    (100_000, 1510, 1439, 1e-5, 2.675),  # arXiv:2305.08846v1 §7 (Fig. 11)
])
def test_reproduces_values_printed_in_the_paper(m, r, v, delta, printed):
    """Pins transcribed from the paper by a third-party repository; matching both to the
    printed digits checks the δ term (dropping it moves both well outside)."""
    assert epsilon_lower_bound(r, v, m, delta, BETA) == pytest.approx(printed, abs=2e-3)
    assert epsilon_lower_bound(r, v, m, 0.0, BETA) > printed + 0.01


def test_p_value_is_a_valid_tail_bound_for_randomized_response():
    """ε-DP randomized response on each coin meets the pure-ε bound with equality: its correct
    guesses are exactly Binomial(r, q)."""
    eps, r, m = 1.0, 40, 40
    q = float(expit(eps))
    for v in (20, 28, 35):
        assert one_run_p_value(r, v, m, eps, 0.0) == pytest.approx(binom.sf(v - 1, r, q))
    assert one_run_p_value(r, 0, m, eps, 0.0) == 1.0
    assert one_run_p_value(r, 30, m, eps, 1e-3) > one_run_p_value(r, 30, m, eps, 0.0)


def test_guesses_from_scores_counts_top_and_bottom():
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.7])
    included = np.array([1, 0, 1, 0, 1, 1])
    # top 2: indices 0 (in, right), 3 (out, wrong); bottom 2: 1 (out, right), 4 (in, wrong)
    assert guesses_from_scores(scores, included, 2, 2) == AuditGuesses(4, 2, 6)
    assert guesses_from_scores(scores, included.astype(bool), 3, 0) == AuditGuesses(3, 2, 6)
    assert guesses_from_scores(scores, included, 0, 1) == AuditGuesses(1, 1, 6)
    assert guesses_from_scores(scores, included, 0, 0) == AuditGuesses(0, 0, 6)


def test_best_lower_bound_pays_a_union_bound_over_the_grid():
    rng = np.random.default_rng(11)
    scores, included = _gaussian_run(2000, 1.0, rng)
    grid = [(10, 10), (50, 50), (200, 200), (500, 500), (50, 50)]  # the repeat is free
    bound, k_pos, k_neg = best_lower_bound(scores, included, DELTA, BETA, grid)
    per_pair = {}
    for pair in dict.fromkeys(grid):
        g = guesses_from_scores(scores, included, *pair)
        per_pair[pair] = epsilon_lower_bound(g.guesses, g.correct, g.canaries, DELTA, BETA / 4)
    assert bound == max(per_pair.values()) == per_pair[(k_pos, k_neg)]
    g = guesses_from_scores(scores, included, k_pos, k_neg)
    assert bound < epsilon_lower_bound(g.guesses, g.correct, g.canaries, DELTA, BETA)


@pytest.mark.parametrize("args", [
    (10, 11, 100), (101, 5, 100), (-1, 0, 10), (5, 3, 0), (5.0, 3, 10), (True, 1, 10),
])
def test_bad_counts_raise(args):
    with pytest.raises(ValueError):
        epsilon_lower_bound(*args, DELTA, BETA)
    with pytest.raises(ValueError):
        AuditGuesses(*args)


@pytest.mark.parametrize("delta,beta", [(-1e-5, BETA), (1.0, BETA), (DELTA, 0.0), (DELTA, 1.0),
                                        (float("nan"), BETA), ("0.1", BETA)])
def test_bad_delta_or_beta_raise(delta, beta):
    with pytest.raises(ValueError, match="delta|beta"):
        epsilon_lower_bound(10, 8, 100, delta, beta)


def test_bad_epsilon_for_p_value_raises():
    for eps in (-0.1, float("inf"), float("nan"), None):
        with pytest.raises(ValueError, match="epsilon"):
            one_run_p_value(10, 8, 100, eps, DELTA)


def test_bad_score_inputs_raise():
    scores, included = np.array([0.3, 0.1, 0.2]), np.array([True, False, True])
    bad_calls = [
        (scores[:2], included, 1, 1),  # shapes differ
        (np.array([0.3, np.nan, 0.2]), included, 1, 1),  # NaN score
        (scores, np.array([1, 2, 0]), 1, 1),  # not a coin
        (scores, included, 2, 2),  # more guesses than canaries
        (scores, included, -1, 1),
        (np.array([]), np.array([], dtype=bool), 0, 0),
        (scores.reshape(3, 1), included.reshape(3, 1), 1, 0),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            guesses_from_scores(*call)
    with pytest.raises(ValueError, match="k_grid"):
        best_lower_bound(scores, included, DELTA, BETA, [])
