"""Client-level DP (DP-FedAvg): Poisson client sampling and the noisy fixed-denominator mean."""

from __future__ import annotations

import random

import pytest
import torch

from common.model_updates import update_norm
from server.client_level_dp import ClientDpSettings, noisy_mean_update, poisson_sample

SETTINGS = ClientDpSettings(noise_multiplier=1.0, clip_norm=2.0, sample_rate=0.1, poisson=True)


def test_poisson_sampling_includes_each_node_independently():
    rng = random.Random(0)
    nodes = list(range(1000))
    sizes = [len(poisson_sample(nodes, 0.1, rng)) for _ in range(200)]
    mean = sum(sizes) / len(sizes)
    assert mean == pytest.approx(100, abs=3)  # binomial: sd of the mean ≈ 0.67
    assert len(set(sizes)) > 10  # the count varies from round to round: not fixed-size
    counts = [0] * 1000
    for _ in range(500):
        for node in poisson_sample(nodes, 0.1, rng):
            counts[node] += 1
    assert min(counts) > 20 and max(counts) < 90  # every node, about 50 times


def test_removing_one_client_moves_the_noiseless_sum_by_at_most_s():
    reference = {"w": torch.zeros(50), "b": torch.zeros(3)}
    rng = torch.Generator().manual_seed(0)
    updates = []
    for _ in range(5):
        raw = {"w": torch.randn(50, generator=rng), "b": torch.randn(3, generator=rng)}
        scale = min(1.0, SETTINGS.clip_norm / update_norm(raw))
        updates.append({k: v * scale for k, v in raw.items()})
    silent = ClientDpSettings(noise_multiplier=0.0, clip_norm=2.0, sample_rate=0.1, poisson=True)
    gen = torch.Generator()
    with_all = noisy_mean_update(updates, reference, 10.0, silent, gen)
    without_one = noisy_mean_update(updates[1:], reference, 10.0, silent, gen)
    change = update_norm({k: (with_all[k] - without_one[k]) * 10.0 for k in reference})
    assert change <= SETTINGS.clip_norm * (1 + 1e-6)


def test_noise_std_is_z_s_over_the_fixed_denominator():
    reference = {"w": torch.zeros(200_000)}
    mean = noisy_mean_update([], reference, 4.0, SETTINGS, torch.Generator().manual_seed(1))
    expected = SETTINGS.noise_multiplier * SETTINGS.clip_norm / 4.0
    assert mean["w"].std().item() == pytest.approx(expected, rel=0.01)
    assert abs(mean["w"].mean().item()) < 0.01
    # A round with no usable update still releases noise (and so must be accounted).
    assert mean["w"].abs().sum() > 0


def test_mechanism_names_say_whether_amplification_is_claimed():
    assert SETTINGS.mechanism == "poisson-subsampled-gaussian"
    fixed = ClientDpSettings(noise_multiplier=1.0, clip_norm=2.0, sample_rate=1.0, poisson=False)
    assert fixed.mechanism == "gaussian-no-amplification"
