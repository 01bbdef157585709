"""Task `simsiam`: the image task's CNN encoder pretrained by SimSiam, both views in one sample.

Per image: draw two views (each shifted by up to MAX_SHIFT pixels with half of its 4×4 patches
hidden, `mae`'s augmentation drawn twice), embed both with the same encoder, projector and
predictor, and score the pair by SimSiam's symmetric negative cosine with stop-gradient
(Chen & He, 2021): 1 − ½·cos(p₁, sg(z₂)) − ½·cos(p₂, sg(z₁)), in [0, 2].

Why this is DP-SGD valid (DESIGN.md): the two views of one image stay in that image's sample.
The encoder runs twice over the batch, once per view, each time with batch dimension B, so
Opacus accumulates both views' contributions into that image's own per-sample gradient; there
are no negatives, no BatchNorm (GroupNorm and LayerNorm only) and no momentum encoder or
queue. Stacking the views along the batch (2B rows) would make each view its own "record" and
double the sensitivity; tests/test_simsiam_task.py measures both.

The encoder is `mae`'s ImageEncoder with the same key names, so fine-tuning, probes, pixel
baselines and node data folders are shared with `mae` unchanged.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn

from common.mae_task import (
    ENCODER_LAYERS,
    FEATURE_DIM,
    GROUPS,
    IMAGE_SHAPE,
    MASK_RATIO,
    MAX_SHIFT,
    ImageEncoder,
    MaskedViews,
    mask_images,
)
from common.run_config import RunConfig

PROJECTION_DIM = 128
PREDICTOR_HIDDEN = 32  # SimSiam's bottleneck predictor (a quarter of the projection)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # LayerNorm where SimSiam has BatchNorm: per-sample statistics keep records uncoupled.
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


class SiameseModel(nn.Module):
    """ImageEncoder, projector and predictor: one view `[B, 1, 28, 28]` → (z, p), each `[B, D]`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ImageEncoder()
        self.projector = _mlp(FEATURE_DIM, PROJECTION_DIM, PROJECTION_DIM)
        self.predictor = _mlp(PROJECTION_DIM, PREDICTOR_HIDDEN, PROJECTION_DIM)

    def forward(
        self, images: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection z and prediction p of one view per image."""
        z = self.projector(self.encoder(images, visible).mean(dim=(2, 3)))
        return z, self.predictor(z)


def two_views(
    images: torch.Tensor, generator: torch.Generator
) -> tuple[MaskedViews, MaskedViews]:
    """Two independently shifted and patch-masked views of every image (drawn per image)."""
    return mask_images(images, generator), mask_images(images, generator)


def pair_loss(model: nn.Module, first: MaskedViews, second: MaskedViews) -> torch.Tensor:
    """Each image's symmetric SimSiam loss over its own two views: shape `[B]`, in [0, 2].

    `model` is called once per view, each with the whole batch: row i of both calls is image i,
    so both views land in image i's per-sample gradient (never 2B rows).
    """
    z1, p1 = model(first.inputs, first.visible)
    z2, p2 = model(second.inputs, second.visible)
    agreement = F.cosine_similarity(p1, z2.detach(), dim=1) \
        + F.cosine_similarity(p2, z1.detach(), dim=1)
    return 1.0 - 0.5 * agreement


def build_model(config: RunConfig) -> SiameseModel:
    """The run's initial model (seed torch first for reproducible weights)."""
    del config
    return SiameseModel()


def public_inputs_sha256(config: RunConfig) -> str:
    """Hash of what server and nodes must agree on: the task's shape and objective."""
    del config
    fixed = {"task": "simsiam", "image_shape": IMAGE_SHAPE, "mask_ratio": MASK_RATIO,
             "max_shift": MAX_SHIFT, "encoder": ENCODER_LAYERS, "groups": GROUPS,
             "projection": PROJECTION_DIM, "predictor": PREDICTOR_HIDDEN}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def per_record_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator
) -> torch.Tensor:
    """Draw two views per image; return each image's own SimSiam loss `[B]`."""
    (images,) = batch
    return pair_loss(model, *two_views(images, generator))
