"""`finetune-es`: early stopping's patience follows the schedule, so a tiny labeled set that
`finetune-min-steps` stretches into many one-step epochs is not stopped inside its warm-up."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from server.evaluation.classifier_training import (
    FinetuneRecipe,
    early_stopping_patience,
    train_early_stopped,
)


def test_patience_stretches_with_the_schedule():
    recipe = FinetuneRecipe(epochs=30, batch_size=32, min_steps=300)
    assert early_stopping_patience(recipe, 3200, 5) == 5  # 100 steps/epoch: nothing stretched
    assert early_stopping_patience(recipe, 32, 5) == 50  # 1 step/epoch: 300 epochs, not 30
    assert early_stopping_patience(FinetuneRecipe(epochs=30), 32, 5) == 5  # no min-steps


class _Linear(nn.Linear):
    num_labels = 2


def test_a_tiny_labeled_set_trains_past_its_warm_up():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 8, generator=generator)
    labels = (inputs[:, 0] > 0).long()
    torch.manual_seed(0)
    model = _Linear(8, 2)
    recipe = FinetuneRecipe(epochs=30, batch_size=32, min_steps=300)  # 300 one-step epochs
    # A validation split whose score cannot change: only patience decides when to stop.
    validation = ((inputs[:4],), np.zeros(4, dtype=np.int64))
    with torch.no_grad():
        model.bias.copy_(torch.tensor([5.0, -5.0]))  # always predicts class 0: score 1.0
    steps = []
    model.register_forward_pre_hook(lambda module, args: steps.append(1) if module.training
                                    else None)
    outcome = train_early_stopped(model, ((inputs,), labels), validation, recipe, 2)
    assert outcome.best_epoch == 1
    # Stopped after the stretched patience (50 epochs without improvement), not after 5:
    # that would end inside the 30-step warm-up.
    assert len(steps) == 1 + 50
