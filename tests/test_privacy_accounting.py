"""Record-level accounting: replace-one PLD claims, calibration to what is left, the independent
replace-one RDP bound, and claimed ε ≥ independent PLD for every node of every shipped preset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.dp_training import DpSettings, poisson_sample_rate, train_locally
from client.local_round import plan_round
from client.node_settings import node_settings
from common.privacy.accounting import (
    ADD_REMOVE,
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    REPLACE_ONE,
    calibrate_noise_multiplier,
    epsilon_of,
    legacy_rdp_epsilon,
)
from common.privacy.dp_randomness import secret_generator
from common.privacy.epsilon_curves import pld_curve, rdp_curve, replace_one_rdp
from common.run_config import RunConfig
from common.tasks.mlm import per_record_loss
from simulations.presets import preset_settings

DELTA = 1e-5
INDEPENDENT_DISCRETIZATION = 1e-4  # dp-accounting's default; the claims use 1e-3


def test_empty_poisson_batches_still_count_as_steps(tiny_mlm, icd_batch):
    records = tuple(t[:2] for t in icd_batch)
    settings = DpSettings(noise_multiplier=1.0, clip_norm=1.0, batch_size=1, local_steps=12,
                          learning_rate=1e-3)
    result = train_locally(tiny_mlm.float(), records, per_record_loss, settings, seed=0,
                           dp_generator=secret_generator())
    assert result.steps == 12
    assert result.sample_rate == 0.5  # q = 1/2: some batches were empty


def test_calibrated_sigma_lands_at_target_epsilon():
    rate, steps = 64 / 10_000, 60
    sigma = calibrate_noise_multiplier(3.0, DELTA, rate, steps, REPLACE_ONE)
    eps = epsilon_of([(sigma, rate, steps)], DELTA, REPLACE_ONE)
    assert 3.0 * 0.98 <= eps <= 3.0
    assert epsilon_of([(sigma * 0.99, rate, steps)], DELTA, REPLACE_ONE) > 3.0  # smallest σ


def test_calibration_leaves_room_for_earlier_spend_and_refuses_when_none_is_left():
    rate, steps = 1 / 20, 40
    fresh = calibrate_noise_multiplier(8.0, DELTA, rate, steps, REPLACE_ONE)
    prior = [(fresh, rate, steps // 2)]  # half of the plan already spent elsewhere
    later = calibrate_noise_multiplier(8.0, DELTA, rate, steps, REPLACE_ONE, prior=prior)
    assert later > fresh  # the same planned steps need more noise now
    assert epsilon_of([*prior, (later, rate, steps)], DELTA, REPLACE_ONE) <= 8.0
    spent = [(fresh, rate, 10 * steps)]
    assert epsilon_of(spent, DELTA, REPLACE_ONE) > 8.0
    assert calibrate_noise_multiplier(8.0, DELTA, rate, steps, REPLACE_ONE, prior=spent) is None


def test_replace_one_costs_more_than_add_remove_where_the_sample_rate_is_large():
    """Known point: n = 5-40, B = 8, 50 steps, σ calibrated to add/remove ε = 8 → replace-one
    PLD 11.8-17.7. A node that releases its record count is in the second regime."""
    from opacus.accountants.utils import get_noise_multiplier

    for n in (5, 40):
        rate = poisson_sample_rate(n, 8)
        # How fedssl calibrated before: Opacus RDP, add/remove-one.
        sigma = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=rate,
                                     steps=50, accountant="rdp", epsilon_tolerance=0.005,
                                     alphas=RDP_ORDERS)
        assert legacy_rdp_epsilon([(sigma, rate, 50)], DELTA) <= 8.0
        replace = epsilon_of([(sigma, rate, 50)], DELTA, REPLACE_ONE)
        assert 11.0 < replace < 18.5
        assert epsilon_of([(sigma, rate, 50)], DELTA, ADD_REMOVE) < replace


def test_zero_noise_is_infinite_and_nothing_spent_is_zero():
    assert epsilon_of([], DELTA, REPLACE_ONE) == 0.0
    assert epsilon_of([(1.0, 0.1, 0)], DELTA, REPLACE_ONE) == 0.0
    assert math.isinf(epsilon_of([(0.0, 0.1, 3)], DELTA, REPLACE_ONE))


def test_legacy_claims_are_opacus_rdp_bit_for_bit():
    """Format-1 entries claimed add/remove with Opacus's RDP accountant: the audit must still
    recompute exactly what they claimed. MNIST DP-SGD point (σ=1.1, q=256/60000): ε 2.60."""
    from opacus.accountants import RDPAccountant

    for history in ([(1.0, 0.1, 20)], [(0.7, 0.05, 13), (1.3, 0.5, 2), (0.7, 0.05, 40)]):
        accountant = RDPAccountant()
        accountant.history = list(history)
        assert legacy_rdp_epsilon(history, DELTA) == accountant.get_epsilon(
            DELTA, alphas=list(RDP_ORDERS))
    rate = 256 / 60_000
    assert legacy_rdp_epsilon([(1.1, rate, int(60 / rate))], DELTA) == pytest.approx(2.60,
                                                                                      abs=0.02)


def test_replace_one_rdp_is_the_gaussian_at_full_sampling_and_bounds_pld():
    orders = np.asarray(RDP_ORDERS)
    # q = 1: two Gaussians 2 apart (sensitivity 2 under replace-one): D_α = 2α/σ².
    assert replace_one_rdp(0.7, 1.0, RDP_ORDERS) == pytest.approx(2 * orders / 0.49, rel=1e-9)
    from opacus.accountants.analysis.rdp import compute_rdp

    for sigma, rate in ((0.41, 0.006), (0.9, 0.09), (3.0, 0.2)):
        replace = replace_one_rdp(sigma, rate, RDP_ORDERS)
        add_remove = compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=RDP_ORDERS)
        assert np.all(replace >= add_remove * (1 - 1e-9))  # replace-one is never cheaper
        events = [(sigma, rate, 30)]
        # Two independent upper bounds of the same mechanism: RDP is the looser one.
        assert rdp_curve(events, [DELTA], REPLACE_ONE)[0] >= pld_curve(events, [DELTA],
                                                                       REPLACE_ONE)[0]


def _preset_sizes(name: str) -> tuple[RunConfig, list[int]]:
    """A preset's settings exactly as `fedssl simulate --preset NAME` resolves them, and its
    simulated nodes' record counts."""
    from common.data.run_splits import text_splits
    from simulations.simulate_command import resolve_config

    config = resolve_config(name, [], None)
    shipped = {k: v for k, v in preset_settings(name).items() if k != "run-dir"}
    assert {k: config.to_mapping()[k] for k in shipped} == shipped  # the preset, not defaults
    return config, [len(texts) for texts in text_splits(config).client_texts]


def _independent_pld(history: list[tuple[float, float, int]], delta: float) -> float:
    """dp-accounting's own PLD accountant, replace-one, at a finer discretization than the
    claims' (a finer grid gives a smaller pessimistic ε); runs of identical rounds are one
    self-composed event (the same mechanism, a third of the cost)."""
    from dp_accounting import NeighboringRelation, dp_event
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE,
                               value_discretization_interval=INDEPENDENT_DISCRETIZATION)
    merged: list[list] = []
    for sigma, rate, steps in history:
        if merged and merged[-1][:2] == [sigma, rate]:
            merged[-1][2] += steps
        else:
            merged.append([sigma, rate, steps])
    for sigma, rate, steps in merged:
        accountant.compose(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)),
                           steps)
    return float(accountant.get_epsilon(delta))


def _check_claims_cover_pld(config: RunConfig, sizes: list[int]) -> None:
    """For nodes of these sizes, each planning its rounds as a simulated node does (its own
    settings, `plan_round` every round): the ε it writes after its last round is at least
    dp-accounting's independent replace-one PLD of what it ran, with no slack, and ≤ its cap."""
    assert INDEPENDENT_DISCRETIZATION < PLD_DISCRETIZATION
    node = node_settings({"partition-id": 0, "num-partitions": config.num_clients}, 1, config,
                         "/unused")
    assert node.max_epsilon == config.target_epsilon
    for rate in sorted({poisson_sample_rate(n, config.batch_size) for n in sizes}):
        history: list[tuple[float, float, int]] = []
        for server_round in range(1, config.num_rounds + 1):
            plan = plan_round(config, node, rate, history, server_round)
            assert plan.noise_multiplier is not None, plan.refusal
            history.append((plan.noise_multiplier, rate, config.local_steps))
        claim = plan.projected  # the ε of the node's last ledger entry
        assert claim >= _independent_pld(history, node.delta), (rate, history)
        assert claim <= node.max_epsilon


@pytest.mark.parametrize("preset", ["demo", "hospitals", "devices"])
def test_smallest_and_largest_node_of_every_preset_claim_at_least_independent_pld(preset):
    """The extremes of each preset's node sizes: the largest sample rate (where replace-one
    costs most) and the smallest. The slow tier checks every node."""
    config, sizes = _preset_sizes(preset)
    _check_claims_cover_pld(config, [min(sizes), max(sizes)])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "hospitals", "devices"])
def test_every_node_of_every_preset_claims_at_least_independent_pld(preset):
    """The issue's acceptance check over every simulated node of every shipped preset."""
    _check_claims_cover_pld(*_preset_sizes(preset))
