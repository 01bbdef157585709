"""What a data kind contributes to the evaluation stage: its labeled data, classifier, baseline.

`text_arms.text_kit` and `image_arms.image_kit` build one; arms.py measures the same arms on
any kit, for `fedssl simulate` (pipeline.py) and `fedssl sweep` alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from server.evaluation.classifier_training import classification_metrics
from server.evaluation.linear_probe import logreg_predict


@dataclass(frozen=True)
class LabeledData:
    """The server's labeled training records and the test split.

    `*_inputs` feed the neural models; `*_raw` feed the classical baseline (texts, or flat
    pixels), row for row the same records.
    """

    train_inputs: tuple[torch.Tensor, ...]
    train_labels: torch.Tensor
    test_inputs: tuple[torch.Tensor, ...]
    test_labels: np.ndarray
    num_classes: int
    train_raw: Sequence[Any] | np.ndarray
    test_raw: Sequence[Any] | np.ndarray

    def subset(self, indices: np.ndarray) -> LabeledData:
        """The same data with only the training records at `indices` (test unchanged)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = torch.as_tensor(idx)
        raw = self.train_raw
        return dataclasses.replace(
            self,
            train_inputs=tuple(t[rows] for t in self.train_inputs),
            train_labels=self.train_labels[rows],
            train_raw=raw[idx] if isinstance(raw, np.ndarray) else [raw[i] for i in idx],
        )


Features = Callable[[dict[str, torch.Tensor] | None, tuple[torch.Tensor, ...]], np.ndarray]
Classical = Callable[[LabeledData, int], np.ndarray]  # (data, seed) -> test predictions


@dataclass(frozen=True)
class DownstreamKit:
    """What one task contributes to the downstream stage."""

    data: LabeledData
    build_classifier: Callable[[dict[str, torch.Tensor] | None], nn.Module]  # None: scratch
    encoder_weights: dict[str, torch.Tensor]  # from the federated model
    classical: tuple[str, str, Classical]  # key, label, baseline
    # Frozen-encoder features [N, D] for linear probes (None: a seeded random-init encoder).
    features: Features
    seed: int
    # The lower half of a classifier's encoder, which the `finetune-top` recipe freezes.
    lower_layers: Callable[[nn.Module], list[nn.Module]]
    save_extra: Callable[[nn.Module, Path], None] | None = None  # e.g. save_pretrained
    # The public checkpoint's own encoder (runs with `init`): the `public` control arms.
    public_weights: dict[str, torch.Tensor] | None = None
    scratch_label: str = "same architecture from scratch"  # what `build_classifier(None)` is
    # Test-split features per (encoder, test split): a probe per label budget re-embeds only
    # its few labeled records (embedding 4,000 test texts with MiniLM takes a minute on 2 cores).
    _test_features: dict[tuple[int, int], tuple[object, object, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False)

    def probe(self, data: LabeledData, encoder_weights: dict[str, torch.Tensor] | None
              ) -> dict[str, float | int]:
        """Logistic regression on frozen features of `encoder_weights` (None: random init)."""
        train = self.features(encoder_weights, data.train_inputs)
        test = self._features_of_test(encoder_weights, data.test_inputs)
        predicted = logreg_predict(train, data.train_labels.numpy(), test, self.seed)
        return classification_metrics(data.test_labels, predicted, data.num_classes)

    def _features_of_test(self, weights: dict[str, torch.Tensor] | None,
                          inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        key = (id(weights), id(inputs[0]))
        cached = self._test_features.get(key)
        # The entry holds the weights and the inputs themselves, so their ids stay unique.
        if cached is None or cached[0] is not weights or cached[1] is not inputs[0]:
            cached = (weights, inputs[0], self.features(weights, inputs))
            self._test_features[key] = cached
        return cached[2]

    def run_classical(self, data: LabeledData) -> dict[str, float | int]:
        """The classical baseline's test metrics on `data`."""
        predicted = self.classical[2](data, self.seed)
        return classification_metrics(data.test_labels, predicted, data.num_classes)
