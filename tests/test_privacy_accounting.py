"""Record-level accounting: empty batches count, σ calibration hits the target ε."""

from __future__ import annotations

import pytest

from client.dp_training import DpSettings, train_locally
from common.mlm_task import per_record_loss
from common.privacy_accounting import (
    calibrate_noise_multiplier,
    epsilon_of,
    merge_history,
)

DELTA = 1e-5


def test_empty_poisson_batches_still_count_as_steps(tiny_mlm, icd_batch):
    records = tuple(t[:2] for t in icd_batch)
    settings = DpSettings(noise_multiplier=1.0, clip_norm=1.0, batch_size=1, local_steps=12,
                          learning_rate=1e-3)
    result = train_locally(tiny_mlm.float(), records, per_record_loss, settings, [], seed=0)
    assert result.steps == 12
    assert result.history == [(1.0, 0.5, 12)]  # q = 1/2: some batches were empty


def test_calibrated_sigma_lands_at_target_epsilon():
    rate, steps = 64 / 10_000, 60
    sigma = calibrate_noise_multiplier(3.0, DELTA, rate, steps)
    eps = epsilon_of([(sigma, rate, steps)], DELTA)
    assert 3.0 * 0.98 <= eps <= 3.0
    assert epsilon_of([(sigma * 0.9, rate, steps)], DELTA) > 3.0  # the smallest σ that fits


def test_rdp_matches_reference_mnist_point():
    """REFERENCE.md: σ=1.1, q=256/60000, 60 epochs, δ=1e-5 → Opacus RDP ε 2.60."""
    rate = 256 / 60_000
    steps = int(60 / rate)
    assert epsilon_of([(1.1, rate, steps)], DELTA) == pytest.approx(2.60, abs=0.02)


def test_merge_history_combines_consecutive_equal_entries():
    merged = merge_history([(1.0, 0.1, 2), (1.0, 0.1, 3), (0.8, 0.1, 1), (1.0, 0.1, 1)])
    assert merged == [(1.0, 0.1, 5), (0.8, 0.1, 1), (1.0, 0.1, 1)]


def test_cached_epsilon_is_bit_for_bit_opacus_rdp_accountant():
    """The per-(σ, q) cache changes nothing: same ε as a fresh RDPAccountant, to the bit."""
    from opacus.accountants import RDPAccountant

    from common.privacy_accounting import RDP_ORDERS, rdp_per_step

    histories = [[(1.0, 0.1, 20)], [(0.7, 0.05, 13), (1.3, 0.5, 2), (0.7, 0.05, 40)],
                 [(0.55, 1.0, 3), (2.0, 0.002, 1000)]]
    for _ in range(2):  # second pass: every (σ, q) now comes from the cache
        for history in histories:
            accountant = RDPAccountant()
            accountant.history = list(history)
            expected = accountant.get_epsilon(DELTA, alphas=list(RDP_ORDERS))
            assert epsilon_of(history, DELTA) == expected
    with pytest.raises(ValueError):  # callers cannot corrupt the shared cached array
        rdp_per_step(1.0, 0.1)[0] = 0.0


def test_cached_calibration_equals_opacus_bisection():
    from opacus.accountants.utils import get_noise_multiplier

    from common.privacy_accounting import RDP_ORDERS

    rate, steps = 1 / 7, 60
    expected = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=rate,
                                    steps=steps, accountant="rdp", epsilon_tolerance=0.005,
                                    alphas=RDP_ORDERS)
    assert calibrate_noise_multiplier(8.0, DELTA, rate, steps) == expected
    assert calibrate_noise_multiplier(8.0, DELTA, rate, steps) == expected  # cached
