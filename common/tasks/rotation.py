"""Task `rotation`: the image task's CNN encoder pretrained by predicting each image's rotation.

Per image: shift it by up to MAX_SHIFT pixels (as `mae` does), rotate it by k × 90° with k
drawn for that image alone, and classify k from the encoder's 7×7 feature map (4-way
cross-entropy). One view per image and no in-batch statistics (GroupNorm), so each image's loss
term depends on that image alone and per-record clipping bounds its influence (as DP-SGD needs; the
test in tests/test_rotation_task.py measures it). Rotation prediction (Gidaris et al., 2018)
is the study's alternative to masked reconstruction, which a Fashion-MNIST trial found to need long
pretraining before its features beat a random encoder's.

The encoder is `mae`'s ImageEncoder with the same key names, so fine-tuning, probes, pixel
baselines and node data folders are shared with `mae` unchanged.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn

from common.run_config import RunConfig
from common.tasks import SslTask
from common.tasks.mae import (
    ENCODER_LAYERS,
    FEATURE_DIM,
    GROUPS,
    IMAGE_SHAPE,
    MAX_SHIFT,
    ImageEncoder,
    check_data,
    client_tensors,
    folder_tensors,
    shift_images,
)

ROTATIONS = 4  # 0°, 90°, 180°, 270°


class RotationModel(nn.Module):
    """ImageEncoder plus a linear head over its whole 7×7 feature map: rotation logits `[B, 4]`.

    The head sees the map, not the pooled vector: a rotation is a spatial layout, and average
    pooling throws that away (measured: with a pooled head the loss stayed at log 4).
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ImageEncoder()
        cells = (IMAGE_SHAPE[1] // 4) * (IMAGE_SHAPE[2] // 4)  # two stride-2 layers: 7×7
        self.head = nn.Linear(FEATURE_DIM * cells, ROTATIONS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Rotation logits of (already rotated) images."""
        return self.head(self.encoder(images).flatten(1))


def rotate_images(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image `[B, C, H, W]` by its own `turns[i]` × 90° (square images)."""
    rotated = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    return rotated[turns, torch.arange(len(images))]


def rotated_views(
    images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shifted and rotated images, their rotation labels), every draw per image."""
    batch = images.shape[0]
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (batch, 2), generator=generator)
    turns = torch.randint(0, ROTATIONS, (batch,), generator=generator)
    return rotate_images(shift_images(images, shifts), turns.to(images.device)), turns


def build_model(config: RunConfig) -> RotationModel:
    """The run's initial model (seed torch first for reproducible weights)."""
    del config
    return RotationModel()


def public_inputs_sha256(config: RunConfig) -> str:
    """Hash of what server and nodes must agree on: the task's shape and objective."""
    del config
    fixed = {"task": "rotation", "image_shape": IMAGE_SHAPE, "rotations": ROTATIONS,
             "max_shift": MAX_SHIFT, "encoder": ENCODER_LAYERS, "groups": GROUPS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def per_record_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator
) -> torch.Tensor:
    """Shift and rotate each image; return its own rotation cross-entropy `[B]`."""
    (images,) = batch
    views, turns = rotated_views(images, generator)
    return F.cross_entropy(model(views), turns.to(views.device), reduction="none")


# Same images, encoder and downstream as `mae`; another objective.
TASK = SslTask(
    name="rotation",
    data_kind="image",
    build_model=build_model,
    client_tensors=client_tensors,
    folder_tensors=folder_tensors,
    public_inputs_sha256=public_inputs_sha256,
    public_files=lambda config: {},
    per_record_loss=per_record_loss,
    check_data=check_data,
)
