"""The audit's independent ε curves against published reference points and the accountants
they stand for (dp-accounting PLD and RDP).
Split from tests/test_ledger_audit.py (tamper evidence, claims, budgets, the CLI).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent
from dp_accounting.pld import PLDAccountant
from simulation_runs import (
    FED_Q,
    FED_Z,
    RATE,
    SIGMA,
    STEPS,
)

from common.privacy.accounting import (
    ACCOUNTANT,
    ADD_REMOVE,
    REPLACE_ONE,
    epsilon_of,
    legacy_rdp_epsilon,
)
from common.privacy.epsilon_curves import claim_curve, pld_curve, rdp_curve
from common.privacy.ledger import (
    GENESIS,
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    LedgerEntry,
    LedgerRow,
    row_hash,
)
from common.privacy.ledger_audit import audit_node


def _single_row(sigma: float, rate: float, steps: int, delta: float) -> LedgerRow:
    """One record-level event as a node writes it (hash included), at the top of a file."""
    draft = LedgerEntry(run_id="r", round=1, node_id="n", guarantee=RECORD_LEVEL,
                        mechanism=POISSON_GAUSSIAN, noise_multiplier=sigma, sample_rate=rate,
                        steps=steps, delta=delta, accountant=ACCOUNTANT,
                        epsilon=epsilon_of([(sigma, rate, steps)], delta, REPLACE_ONE),
                        max_epsilon=0.0, timestamp="2026-01-01T00:00:00+00:00",
                        prev_hash=GENESIS, relation=REPLACE_ONE, noise=SECRET_NOISE)
    entry = dataclasses.replace(draft, hash=draft.computed_hash())
    return LedgerRow(seq=1, entry=entry, row_prev=GENESIS, row_hash=row_hash(GENESIS, entry.hash))


# ---------------------------------------------------------------------------------------- CLI


def test_mnist_reference_point():
    """MNIST DP-SGD: σ=1.1, q=256/60000, 60 epochs, δ=1e-5 -> RDP 2.60 (Opacus), PLD 2.38,
    both add/remove; a node's record-level ε is replace-one, which costs more."""
    steps = round(60 * 60000 / 256)
    events = [(1.1, 256 / 60000, steps)]
    assert rdp_curve(events, [1e-5], ADD_REMOVE)[0] == pytest.approx(2.60, rel=0.01)
    add_remove_pld = pld_curve(events, [1e-5], ADD_REMOVE)[0]
    assert add_remove_pld == pytest.approx(2.38, rel=0.01)
    row = _single_row(sigma=1.1, rate=256 / 60000, steps=steps, delta=1e-5)
    node = audit_node([row])
    assert node.relation == REPLACE_ONE and node.ok, node.reasons
    assert node.events[0].claim_consistent and node.events[0].claim_covers
    assert add_remove_pld < node.epsilon_pld <= node.claimed_epsilon <= node.epsilon_rdp


def test_client_level_reference_point():
    """DP-FedAvg: z=1, q=0.1, 200 rounds, δ=5e-4 -> RDP 8.65, one (z, q, 1) event per round."""
    curve = rdp_curve([(1.0, 0.1, 1)] * 200, [5e-4] * 200, ADD_REMOVE)
    assert curve[-1] == pytest.approx(8.65, rel=0.01)
    assert curve[-1] == pytest.approx(legacy_rdp_epsilon([(1.0, 0.1, 200)], 5e-4), rel=1e-9)
    assert all(a < b for a, b in itertools.pairwise(curve))


def test_curves_match_the_accountants_they_stand_for():
    # Two (σ, q) regimes (the run fixture's, so their PLDs are cached), a plain Gaussian
    # (q = 1) and a zero-step event (spends nothing).
    events = [(SIGMA, RATE, STEPS), (FED_Z, FED_Q, 1), (1.0, 1.0, 3), (SIGMA, RATE, 0)]
    deltas = [1e-5] * len(events)
    # Bit-identical to how writers claim, so claims can be compared at 1e-6:
    for relation in (REPLACE_ONE, ADD_REMOVE):
        assert claim_curve(events, deltas, ["pld"] * len(events), [relation] * len(events)) \
            == [epsilon_of(events[: i + 1], 1e-5, relation) for i in range(len(events))]
    # Format-1 entries (accountant "rdp", no relation): Opacus RDP, bit-identical too.
    assert claim_curve(events, deltas, ["rdp"] * len(events), [""] * len(events)) \
        == [legacy_rdp_epsilon(events[: i + 1], 1e-5) for i in range(len(events))]
    assert rdp_curve(events, deltas, ADD_REMOVE) == pytest.approx(
        [legacy_rdp_epsilon(events[: i + 1], 1e-5) for i in range(len(events))], rel=1e-9)
    accountant, expected = PLDAccountant(), []
    for sigma, rate, steps in events:
        inner = GaussianDpEvent(sigma) if rate == 1 else PoissonSampledDpEvent(
            rate, GaussianDpEvent(sigma))
        if steps:  # a zero-step event spends nothing (DpEvents cannot say so)
            accountant.compose(SelfComposedDpEvent(inner, steps))
        expected.append(accountant.get_epsilon(1e-5))
    add_remove = pld_curve(events, deltas, ADD_REMOVE)
    assert add_remove == pytest.approx(expected, rel=1e-9)  # PLDAccountant is add/remove
    # Replace-one (PLDAccountant has no Poisson replace-one): above add/remove, below the
    # independent RDP bound, at every event.
    replace = pld_curve(events, deltas, REPLACE_ONE)
    bound = rdp_curve(events, deltas, REPLACE_ONE)
    assert all(a < r <= b for a, r, b in zip(add_remove, replace, bound, strict=True))
    for relation in (REPLACE_ONE, ADD_REMOVE):
        assert pld_curve([(0.0, 0.1, 1), (1.0, 0.1, 1)], [1e-5] * 2, relation) \
            == [float("inf")] * 2
