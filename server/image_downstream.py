"""The image task's downstream pieces: labeled images, the CNN classifier, and baselines.

Besides fine-tuning, images get two linear probes, because a probe on self-supervised
features is only informative next to the same probe on a *random-init* encoder (REFERENCE.md:
150 MAE steps gave features no better than random ones). The classical baseline is logistic
regression on raw pixels. All probes and the baseline use the same labeled images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from common.mae_task import (
    DATASET,
    ImageEncoder,
    build_image_classifier,
    encode_features,
    encoder_state,
)
from common.own_data import image_splits
from common.run_config import RunConfig
from server.classifier_training import classification_metrics
from server.downstream_stage import DownstreamKit, LabeledData

LOGREG_MAX_ITER = 2000


def image_kit(config: RunConfig, pretrained: nn.Module) -> DownstreamKit:
    """Labeled MNIST-5k images, the CNN classifier, pixel logistic regression, two probes."""
    splits = image_splits(config, DATASET)
    num_classes = len(splits.label_names)
    data = LabeledData(
        train_inputs=(torch.tensor(splits.labeled_images),),
        train_labels=torch.as_tensor(splits.labeled_labels, dtype=torch.long),
        test_inputs=(torch.tensor(splits.test_images),),
        test_labels=np.asarray(splits.test_labels),
        num_classes=num_classes,
    )
    weights = encoder_state(pretrained)

    def pixels() -> np.ndarray:
        flat = splits.labeled_images.reshape(len(splits.labeled_images), -1)
        test = splits.test_images.reshape(len(splits.test_images), -1)
        return _logreg(flat, splits.labeled_labels, test, config.seed)

    def probe(encoder_weights: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        encoder = ImageEncoder()
        if encoder_weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                encoder = ImageEncoder()
        else:
            encoder.load_state_dict(encoder_weights)
        train = encode_features(encoder, data.train_inputs[0]).numpy()
        test = encode_features(encoder, data.test_inputs[0]).numpy()
        predicted = _logreg(train, splits.labeled_labels, test, config.seed)
        return classification_metrics(data.test_labels, predicted, num_classes)

    def classifier(encoder_weights: dict[str, torch.Tensor] | None) -> nn.Module:
        model = build_image_classifier(num_classes, encoder_weights, seed=config.seed)
        model.num_labels = num_classes  # what train_classifier checks labels against
        return model

    return DownstreamKit(
        data=data,
        build_classifier=classifier,
        encoder_weights=weights,
        classical=("pixels", "logistic regression on pixels", pixels),
        extra_arms=[
            ("probe", "SSL encoder (federated, DP), linear probe", lambda: probe(weights)),
            ("probe_random", "random-init encoder, linear probe (control)",
             lambda: probe(None)),
        ],
    )


def _logreg(train: np.ndarray, labels: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    """Standardised features, multinomial logistic regression; predicted test classes."""
    scaler = StandardScaler().fit(train)
    model = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
    model.fit(scaler.transform(train), labels)
    return model.predict(scaler.transform(test)).astype(np.int64)
