"""The `rotation` objective: rotations drawn per image, per-record sensitivity ≤ C under Opacus,
an encoder the image downstream stage can load, and a loss that actually learns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from common.data.demo_images import load_mnist5k
from common.run_config import RunConfig
from common.tasks import get_task
from common.tasks.mae import ImageEncoder, encoder_state
from common.tasks.rotation import ROTATIONS, RotationModel, per_record_loss, rotate_images

CLIP = 1e-3  # small enough that every per-record gradient here is actually clipped


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    images, labels = load_mnist5k()
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(8)]
    return torch.tensor(images[picks], dtype=torch.float64)


def test_each_image_turns_by_its_own_quarter(digits):
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    rotated = rotate_images(digits, turns)
    for i, k in enumerate(turns.tolist()):
        torch.testing.assert_close(rotated[i], torch.rot90(digits[i], k, dims=(1, 2)))
    four_times = digits
    for _ in range(ROTATIONS):
        four_times = rotate_images(four_times, torch.ones(8, dtype=torch.long))
    torch.testing.assert_close(four_times, digits)


def _clipped_sum(gsm, optimizer, images, rows) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    # The same per-image draws whatever the batch: draw for all, then keep the rows.
    losses = per_record_loss(gsm, (images,), generator)[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses.mean().backward()
    optimizer.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.flatten() for p in optimizer.params])
    optimizer.zero_grad(set_to_none=True)
    return summed


def test_removing_one_image_moves_clipped_sum_by_at_most_clip_norm(digits):
    torch.manual_seed(0)
    model = RotationModel().double()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                            max_grad_norm=CLIP, expected_batch_size=len(digits))
    everyone = list(range(len(digits)))
    full = _clipped_sum(gsm, optimizer, digits, everyone)
    for removed in (0, 4, 7):
        rest = [r for r in everyone if r != removed]
        change = full - _clipped_sum(gsm, optimizer, digits, rest)
        alone = _clipped_sum(gsm, optimizer, digits, [removed])
        torch.testing.assert_close(change, alone, rtol=1e-6, atol=1e-12)  # no coupling
        assert 0.99 * CLIP < change.norm() <= CLIP * (1 + 1e-6)


def test_the_registry_task_feeds_the_image_downstream_stage():
    task = get_task("rotation")
    assert task.data_kind == "image" and task.grad_sample_mode == "hooks"
    weights = encoder_state(task.build_model(RunConfig(task="rotation")))
    ImageEncoder().load_state_dict(weights)  # the classifier's and the probe's encoder
    assert task.public_inputs_sha256(RunConfig()) != get_task("mae").public_inputs_sha256(
        RunConfig())  # nodes running the other image objective are told apart


def test_loss_falls_below_guessing_in_60_non_private_steps():
    images = torch.tensor(load_mnist5k()[0][:2000])
    torch.manual_seed(0)
    model = RotationModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        batch = images[(step * 32) % 1920 : (step * 32) % 1920 + 32]
        optimizer.zero_grad()
        loss = per_record_loss(model, (batch,), generator).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.log(ROTATIONS), losses  # log 4 = guessing
