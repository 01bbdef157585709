"""The image task's downstream pieces: labeled images, the CNN classifier, and baselines.

The classical baseline is logistic regression on raw pixels; probe features are the pooled
features of the (frozen) CNN encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.data.run_splits import image_splits
from common.run_config import RunConfig
from common.tasks.mae import (
    DATASET,
    ImageEncoder,
    build_image_classifier,
    encode_features,
    encoder_state,
    lower_encoder_layers,
)
from server.evaluation.downstream_kit import DownstreamKit, LabeledData
from server.evaluation.linear_probe import logreg_predict


def image_kit(config: RunConfig, pretrained: nn.Module) -> DownstreamKit:
    """Labeled images (MNIST-5k or the run's own `data`), the CNN classifier, pixel logistic
    regression, probe features."""
    splits = image_splits(config, DATASET)
    num_classes = len(splits.label_names)
    data = LabeledData(
        train_inputs=(torch.tensor(splits.labeled_images),),
        train_labels=torch.tensor(splits.labeled_labels, dtype=torch.long),  # a copy: the cached
        # split arrays are read-only, and torch warns about sharing them
        test_inputs=(torch.tensor(splits.test_images),),
        test_labels=np.asarray(splits.test_labels),
        num_classes=num_classes,
        train_raw=splits.labeled_images.reshape(len(splits.labeled_images), -1),
        test_raw=splits.test_images.reshape(len(splits.test_images), -1),
    )

    def pixels(labeled: LabeledData, seed: int) -> np.ndarray:
        return logreg_predict(labeled.train_raw, labeled.train_labels.numpy(),
                              labeled.test_raw, seed)

    def features(weights: dict[str, torch.Tensor] | None,
                 inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the random-init control is seeded
            encoder = ImageEncoder()
        if weights is not None:
            encoder.load_state_dict(weights)
        return encode_features(encoder, inputs[0]).numpy()

    def classifier(encoder_weights: dict[str, torch.Tensor] | None) -> nn.Module:
        model = build_image_classifier(num_classes, encoder_weights, seed=config.seed)
        model.num_labels = num_classes  # what train_classifier checks labels against
        return model

    return DownstreamKit(
        data=data,
        build_classifier=classifier,
        encoder_weights=encoder_state(pretrained),
        classical=("pixels", "logistic regression on pixels", pixels),
        features=features,
        seed=config.seed,
        lower_layers=lower_encoder_layers,
    )
