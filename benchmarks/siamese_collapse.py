"""Do SimSiam / BYOL objectives without batch statistics collapse on the image task's CNN?

DP-SGD forbids BatchNorm (it couples records), and BatchNorm is what keeps SimSiam and BYOL
from collapsing in their papers. This script trains, non-privately, the image task's
GroupNorm encoder (`common/tasks/mae.py`) with a projector and predictor that use LayerNorm
instead, on two views per image (shift + half the 4×4 patches hidden, `mae`'s augmentation
drawn twice, both views inside the image's sample as DP-SGD requires), and reports:

* the loss;
* spread = mean over dimensions of the std of ℓ2-normalised projections × √d (SimSiam's
  collapse criterion: about 1 for well-spread outputs, → 0 when every image maps to one
  vector);
* a linear probe on the encoder's pooled features: 100 labels, 1000 test images of MNIST-5k.

Variants: SimSiam (target = the online projection, stop-gradient), and BYOL with the target
taken from the online network every `--round-steps` steps (what a federated round would do:
the target is the global model the round started from); each with the projector reading the
pooled features or the flattened 7×7 map.

    .venv/bin/python benchmarks/siamese_collapse.py            # ~6 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.demo_images import load_mnist5k
from common.tasks.mae import FEATURE_DIM, ImageEncoder, mask_images

DIM = 128


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


class Siamese(nn.Module):
    """Encoder → projector (pooled or flattened map) → z; predictor(z) → p."""

    def __init__(self, flat: bool) -> None:
        super().__init__()
        self.flat = flat
        self.encoder = ImageEncoder()
        self.projector = _mlp(FEATURE_DIM * (49 if flat else 1), DIM, DIM)
        self.predictor = _mlp(DIM, DIM, DIM)

    def project(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(images, visible)
        return self.projector(maps.flatten(1) if self.flat else maps.mean(dim=(2, 3)))


def per_image_loss(online: Siamese, target: Siamese | None, images: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Symmetric negative cosine per image, both views of image i in row i: `[B]`."""
    first, second = mask_images(images, generator), mask_images(images, generator)
    z1, z2 = online.project(first.inputs, first.visible), online.project(second.inputs,
                                                                         second.visible)
    p1, p2 = online.predictor(z1), online.predictor(z2)
    if target is not None:  # BYOL: the other view's projection by the frozen target
        with torch.no_grad():
            z1 = target.project(first.inputs, first.visible)
            z2 = target.project(second.inputs, second.visible)
    agreement = F.cosine_similarity(p1, z2.detach(), dim=1) \
        + F.cosine_similarity(p2, z1.detach(), dim=1)
    return 1.0 - 0.5 * agreement


def spread(model: Siamese, images: torch.Tensor, generator: torch.Generator) -> float:
    with torch.no_grad():
        view = mask_images(images, generator)
        z = model.project(view.inputs, view.visible)
    return F.normalize(z, dim=1).std(dim=0).mean().item() * np.sqrt(DIM)


def probe(model: Siamese, images: torch.Tensor, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        features = model.encoder.features(images).numpy()
    train, test = np.arange(0, 3000, 30), np.arange(3000, 4000)
    classifier = LogisticRegression(max_iter=2000).fit(features[train], labels[train])
    return float(classifier.score(features[test], labels[test]))


def run(objective: str, flat: bool, steps: int, round_steps: int, images: torch.Tensor,
        labels: np.ndarray) -> None:
    torch.manual_seed(0)
    model = Siamese(flat)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    name = f"{objective}, projector on {'7x7 map' if flat else 'pooled features'}"
    print(f"| {name} | 0 | – | {spread(model, images[:256], generator):.3f} | "
          f"{probe(model, images, labels):.3f} |", flush=True)
    target = None
    for step in range(steps):
        if objective == "byol" and step % round_steps == 0:
            target = copy.deepcopy(model).requires_grad_(False)
        batch = images[(step * 64) % 2944 : (step * 64) % 2944 + 64]
        optimizer.zero_grad()
        loss = per_image_loss(model, target, batch, generator).mean()
        loss.backward()
        optimizer.step()
        if (step + 1) % (steps // 3) == 0:
            print(f"| {name} | {step + 1} | {loss.item():.3f} | "
                  f"{spread(model, images[:256], generator):.3f} | "
                  f"{probe(model, images, labels):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--round-steps", type=int, default=20)
    args = parser.parse_args()
    pixels, digits = load_mnist5k()
    order = np.random.RandomState(0).permutation(len(pixels))[:4000]  # the set is class-sorted
    images, labels = torch.tensor(pixels[order]), digits[order]
    print("| objective | step | loss | spread | probe (100 labels) |\n|---|---|---|---|---|")
    for objective in ("simsiam", "byol"):
        for flat in (False, True):
            run(objective, flat, args.steps, args.round_steps, images, labels)


if __name__ == "__main__":
    main()
