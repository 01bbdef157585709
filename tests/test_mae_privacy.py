"""The `mae` objective under Opacus: exact per-sample gradients, per-record sensitivity ≤ C.

A negative control shows the sensitivity test has teeth: the same objective with two masked
views of each image stacked along the batch dimension (a known sensitivity bug) moves the
clipped gradient sum by about 2C when one image is removed.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from common.data.data_folders import DataFolderError
from common.data.demo_images import load_mnist5k
from common.run_config import RunConfig
from common.tasks.mae import (
    FEATURE_DIM,
    MAX_SHIFT,
    NUM_MASKED,
    PATCH,
    ImageClassifier,
    MaskedImageModel,
    MaskedViews,
    build_image_classifier,
    encode_features,
    encoder_state,
    folder_tensors,
    images_to_tensors,
    mask_images,
    per_record_loss,
    reconstruction_loss,
    shift_images,
)

CLIP = 1e-3  # small enough that every per-record gradient here is actually clipped


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist5k()


@pytest.fixture(scope="module")
def digits(mnist) -> torch.Tensor:
    """Eight real MNIST digits of different classes, float64."""
    images, labels = mnist
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(8)]
    return torch.tensor(images[picks], dtype=torch.float64)


@pytest.fixture()
def model() -> MaskedImageModel:
    torch.manual_seed(0)
    return MaskedImageModel().double()


def _views(images: torch.Tensor, seed: int = 3) -> MaskedViews:
    return mask_images(images, torch.Generator().manual_seed(seed))


def _rows(views: MaskedViews, rows: list[int]) -> MaskedViews:
    return MaskedViews(views.inputs[rows], views.visible[rows], views.targets[rows])


def _loss(module: nn.Module, views: MaskedViews, rows: list[int]) -> torch.Tensor:
    return reconstruction_loss(module, _rows(views, rows)).mean()


def test_masking_hides_half_the_patches_of_each_shifted_image(digits):
    views = _views(digits.repeat(4, 1, 1, 1))
    patch_visible = views.visible[:, 0, ::PATCH, ::PATCH]  # one pixel per patch
    assert torch.all((patch_visible == 0).flatten(1).sum(1) == NUM_MASKED)
    # Patches are hidden whole, and a hidden pixel is zero in the input.
    blocks = views.visible.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)
    assert torch.all(blocks.amin(dim=(-1, -2)) == blocks.amax(dim=(-1, -2)))
    assert torch.all(views.inputs[views.visible == 0] == 0)
    # The target is the image shifted by its own (dy, dx) within ±MAX_SHIFT; the draws vary.
    images = digits.repeat(4, 1, 1, 1)
    offsets = [(dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1)
               for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)]
    found = []
    for row in range(len(images)):
        matches = [o for o in offsets if torch.equal(
            shift_images(images[row : row + 1], torch.tensor([o])), views.targets[row : row + 1])]
        assert matches, f"row {row} is not a shift of its image"
        found.append(matches[0])
    assert len(set(found)) > 3
    assert not torch.equal(views.visible[0], views.visible[8])  # copies get their own masks
    assert torch.equal(_views(images).inputs, views.inputs)  # same generator state, same views


def test_losses_are_per_image_and_finite(model, digits):
    views = _views(digits)
    batched = reconstruction_loss(model, views)
    assert batched.shape == (len(digits),) and torch.isfinite(batched).all()
    alone = torch.cat([reconstruction_loss(model, _rows(views, [r])) for r in range(len(digits))])
    # No coupling between images: an image's loss is the same with or without the others.
    torch.testing.assert_close(batched, alone, rtol=1e-12, atol=1e-12)
    # per_record_loss draws its views from the generator it is given.
    generated = per_record_loss(model, (digits,), torch.Generator().manual_seed(3))
    torch.testing.assert_close(generated, batched, rtol=0, atol=0)


def _brute_force_grads(reference: nn.Module, views: MaskedViews, row: int) -> list[torch.Tensor]:
    reference.zero_grad(set_to_none=True)
    _loss(reference, views, [row]).backward()
    return [p.grad.detach().clone() for p in reference.parameters()]


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_per_sample_gradients_equal_brute_force(model, digits, mode):
    views = _views(digits)
    batch = len(digits)
    reference = copy.deepcopy(model)  # plain autograd, no Opacus hooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "ew":
            wrapped = GradSampleModuleExpandedWeights(model, batch_first=True,
                                                      loss_reduction="mean")
        else:
            wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean",
                                       force_functorch=(mode == "functorch"))
        _loss(wrapped, views, list(range(batch))).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(getattr(p, "grad_sample", None) is not None for p in params)
    per_sample = [p.grad_sample.detach().clone() for p in params]
    for row in range(batch):
        expected = _brute_force_grads(reference, views, row)
        for got, exp in zip(per_sample, expected, strict=True):
            # loss_reduction="mean" scales per-sample grads back to the per-record loss
            torch.testing.assert_close(got[row], exp, rtol=1e-6, atol=1e-10)


def _clipped_sum(optimizer: DPOptimizer, loss: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Full backward hook is firing ..." (inputs need no grad)
        loss.backward()
    optimizer.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.flatten() for p in optimizer.params])
    optimizer.zero_grad(set_to_none=True)
    return summed


def _private(model: nn.Module, batch: int) -> tuple[GradSampleModule, DPOptimizer]:
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                            max_grad_norm=CLIP, expected_batch_size=batch)
    return gsm, optimizer


def test_removing_one_image_moves_clipped_sum_by_at_most_clip_norm(model, digits):
    views = _views(digits)
    gsm, optimizer = _private(model, len(digits))
    everyone = list(range(len(digits)))
    full = _clipped_sum(optimizer, _loss(gsm, views, everyone))
    for removed in (0, 3, 7):
        rest = [r for r in everyone if r != removed]
        without = _clipped_sum(optimizer, _loss(gsm, views, rest))
        alone = _clipped_sum(optimizer, _loss(gsm, views, [removed]))
        change = full - without
        # The change is exactly that image's own clipped gradient: no coupling ...
        torch.testing.assert_close(change, alone, rtol=1e-6, atol=1e-12)
        # ... so it is bounded by the clip norm, and here the bound is attained.
        assert change.norm() <= CLIP * (1 + 1e-6)
        assert change.norm() > 0.99 * CLIP


def _stacked_views_loss(module: nn.Module, first: MaskedViews, second: MaskedViews,
                        records: list[int]) -> torch.Tensor:
    """THE BUG: two views of each image as two rows of the batch, so Opacus clips each view
    separately and one image contributes two clipped gradients."""
    stacked = MaskedViews(*(torch.cat([a[records], b[records]])
                            for a, b in zip((first.inputs, first.visible, first.targets),
                                            (second.inputs, second.visible, second.targets),
                                            strict=True)))
    return reconstruction_loss(module, stacked).mean()


def test_negative_control_stacked_views_double_the_sensitivity(model, digits):
    first, second = _views(digits, seed=3), _views(digits, seed=4)
    gsm, optimizer = _private(model, 2 * len(digits))
    everyone = list(range(len(digits)))
    full = _clipped_sum(optimizer, _stacked_views_loss(gsm, first, second, everyone))
    changes = []
    for removed in (0, 3, 7):
        rest = [r for r in everyone if r != removed]  # removing an image removes both rows
        without = _clipped_sum(optimizer, _stacked_views_loss(gsm, first, second, rest))
        changes.append(float((full - without).norm() / CLIP))
    # Two clipped gradients of one image point roughly the same way: ≈ 2C, never ≤ C.
    assert min(changes) > 1.5, changes
    assert max(changes) <= 2 * (1 + 1e-6), changes


@pytest.mark.parametrize("build", [MaskedImageModel, lambda: ImageClassifier(10)])
def test_no_batchnorm_no_running_stats_no_inplace_relu(build):
    module = build()
    assert ModuleValidator.validate(module, strict=False) == []
    assert not any(getattr(m, "track_running_stats", False) for m in module.modules())
    assert list(module.buffers()) == []  # nothing shared across records (running stats, queues)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in module.modules())
    # The validator is not vacuous: it does reject BatchNorm.
    assert ModuleValidator.validate(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
                                    strict=False)


def test_loss_decreases_over_30_non_private_steps_on_mnist5k(mnist):
    images = torch.tensor(mnist[0][:1200])
    torch.manual_seed(0)
    model = MaskedImageModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(30):
        optimizer.zero_grad()
        loss = per_record_loss(model, (images[step * 32 : (step + 1) * 32],), generator).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    # Held-out images: better than painting the masked patches black (MNIST's background),
    # so the model has learnt something about digits, not just the output scale.
    views = _views(images[960:], seed=9)
    with torch.no_grad():
        trained = reconstruction_loss(model, views).mean()
        black = reconstruction_loss(lambda inputs, _: torch.zeros_like(inputs), views).mean()
    assert trained < 0.9 * black, (float(trained), float(black))


def test_classifier_reuses_pretrained_encoder_and_probe_features(model, digits):
    weights = {k: v.float() for k, v in encoder_state(model).items()}
    classifier = build_image_classifier(10, weights, seed=1)
    for key, value in classifier.encoder.state_dict().items():
        assert torch.equal(value, weights[key])
    state = torch.get_rng_state()
    scratch = build_image_classifier(10, None, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(scratch.head.weight, classifier.head.weight)  # same seed, same head
    assert classifier(digits.float()).shape == (len(digits), 10)
    features = encode_features(classifier.encoder, digits.float(), batch_size=3)
    assert features.shape == (len(digits), FEATURE_DIM) and not features.requires_grad
    assert classifier.encoder.training  # the probe restores the mode it found


def test_wrong_image_shape_is_a_content_free_folder_error(tmp_path):
    colour = np.full((2, 3, 28, 28), 0.123456, dtype=np.float32)
    with pytest.raises(DataFolderError) as err:
        images_to_tensors(colour)
    assert err.value.kind == "wrong-format"
    message = str(err.value)
    assert "3 channels x 28 x 28" in message and "expects 1 channel x 28 x 28" in message
    assert "0.12" not in message
    np.save(tmp_path / "scans.npy", np.zeros((4, 32, 32), dtype=np.uint8))
    with pytest.raises(DataFolderError, match="1 channel x 32 x 32"):
        folder_tensors(RunConfig(), tmp_path)
    (tmp_path / "scans.npy").unlink()
    np.save(tmp_path / "digits.npy", np.zeros((4, 28, 28), dtype=np.uint8))
    (records,) = folder_tensors(RunConfig(), tmp_path)
    assert records.shape == (4, 1, 28, 28) and records.dtype == torch.float32
