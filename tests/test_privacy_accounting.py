"""Record-level accounting: history survives rounds; σ calibration hits the target ε."""

from __future__ import annotations

import pytest
from flwr.app import RecordDict
from opacus.accountants import RDPAccountant

from client.dp_training import DpSettings, poisson_sample_rate, train_locally
from client.privacy_state import PrivacyState, load_privacy_state, save_privacy_state
from common.mlm_task import per_record_loss
from common.privacy_accounting import (
    RDP_ORDERS,
    calibrate_noise_multiplier,
    epsilon_of,
    merge_history,
)

DELTA = 1e-5


def test_restored_history_equals_one_uninterrupted_accountant(tiny_mlm, icd_batch):
    """k rounds, each with a fresh PrivacyEngine restored from state == one long accountant."""
    records = tuple(t.repeat(4, 1) for t in icd_batch)  # 32 records
    settings = DpSettings(noise_multiplier=1.1, clip_norm=1.0, batch_size=8, local_steps=3,
                          learning_rate=1e-3)
    node_state = RecordDict()
    rounds = 3
    for server_round in range(rounds):
        privacy = load_privacy_state(node_state)
        result = train_locally(tiny_mlm.float(), records, per_record_loss, settings,
                               privacy.history, seed=server_round)
        save_privacy_state(node_state, PrivacyState(1.1, result.history))

    history = load_privacy_state(node_state).history
    rate = poisson_sample_rate(len(records[0]), settings.batch_size)
    assert history == [(1.1, rate, rounds * settings.local_steps)]

    uninterrupted = RDPAccountant()
    for _ in range(rounds * settings.local_steps):
        uninterrupted.step(noise_multiplier=1.1, sample_rate=rate)
    expected = uninterrupted.get_epsilon(DELTA, alphas=RDP_ORDERS)
    assert epsilon_of(history, DELTA) == pytest.approx(expected, rel=1e-12)
    # Forgetting earlier rounds (a fresh engine per round) would under-count:
    assert epsilon_of([(1.1, rate, settings.local_steps)], DELTA) < 0.75 * expected


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


def test_privacy_state_round_trip_and_first_round_default():
    state = RecordDict()
    assert load_privacy_state(state) == PrivacyState()
    saved = PrivacyState(0.73, [(0.73, 0.01, 20), (0.5, 0.02, 7)])
    save_privacy_state(state, saved)
    assert load_privacy_state(state) == saved
