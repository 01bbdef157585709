"""One label-efficiency measurement: an encoder, a label budget, a recipe → test metrics.

`fedssl sweep` calls this for every cell of its grid. Within a seed every arm sees exactly
the same labeled records (`common.data.label_budgets.select_labeled`), the same validation split
carved from them, and the same test split; scratch and pretrained encoders share the recipe,
so only the starting weights differ. Recipes:

* `finetune`     the run's fine-tuning recipe, fixed in advance (epochs, batch, lr);
* `finetune-es`  the same recipe with early stopping on macro-F1 of a validation split carved
                 from the labeled budget (20%, stratified), never the test split; not defined
                 when no class has 2 labels (then the cell is reported as not applicable);
* `finetune-top` the `finetune` recipe with the lower half of the encoder frozen (text: the
                 embeddings and the lower half of the layers; images: the first half of the
                 conv blocks), so few labels cannot overwrite the pretrained lower layers;
* `probe`        logistic regression on frozen encoder features (for scratch: a random-init
                 encoder, the control every probe needs);
* `classical`    the task's classical baseline (TF-IDF / pixels + logistic regression).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from common.data.label_budgets import LabelBudget, select_labeled, validation_split
from common.run_config import RunConfig
from server.evaluation.classifier_training import (
    classification_metrics,
    freeze,
    predict,
    train_classifier,
    train_early_stopped,
)
from server.evaluation.downstream_kit import DownstreamKit
from server.evaluation.pipeline import finetune_recipe

RECIPES = ("finetune", "finetune-es", "finetune-top", "probe")
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class BudgetResult:
    """Test metrics of one cell; `applicable` False when the recipe cannot run on the budget."""

    n_labels: int
    classes_labeled: int
    accuracy: float = float("nan")
    macro_f1: float = float("nan")
    validation_macro_f1: float = float("nan")
    best_epoch: int = 0
    seconds: float = 0.0
    applicable: bool = True


def evaluate_budget(
    kit: DownstreamKit,
    encoder_weights: dict[str, torch.Tensor] | None,
    budget: LabelBudget,
    recipe: str,
    config: RunConfig,
) -> BudgetResult:
    """Train/score one arm on `budget` labels of the kit's pool; `encoder_weights` None = scratch.

    `recipe` is one of RECIPES or `classical` (which ignores `encoder_weights`).
    """
    seed = config.seed
    pool = kit.data
    chosen = select_labeled(pool.train_labels.numpy(), budget, seed)
    data = pool.subset(chosen)
    labels = data.train_labels.numpy()
    base = {"n_labels": len(chosen), "classes_labeled": len(np.unique(labels))}
    start = time.monotonic()
    if recipe == "classical":
        metrics = kit.run_classical(data)
        return BudgetResult(**base, accuracy=float(metrics["accuracy"]),
                            macro_f1=float(metrics["macro_f1"]),
                            seconds=round(time.monotonic() - start, 1))
    if recipe == "probe":
        metrics = kit.probe(data, encoder_weights)
        return BudgetResult(**base, accuracy=float(metrics["accuracy"]),
                            macro_f1=float(metrics["macro_f1"]),
                            seconds=round(time.monotonic() - start, 1))
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}, classical")
    model = kit.build_classifier(encoder_weights)
    training = finetune_recipe(config)
    extra: dict[str, float | int] = {}
    if recipe in ("finetune", "finetune-top"):
        if recipe == "finetune-top":
            freeze(kit.lower_layers(model))
        train_classifier(model, data.train_inputs, data.train_labels, training)
    else:
        split = validation_split(labels, VALIDATION_FRACTION, seed)
        if split is None:
            return BudgetResult(**base, applicable=False)
        train_idx, val_idx = (torch.as_tensor(i) for i in split)
        outcome = train_early_stopped(
            model,
            (tuple(t[train_idx] for t in data.train_inputs), data.train_labels[train_idx]),
            (tuple(t[val_idx] for t in data.train_inputs), labels[val_idx.numpy()]),
            training,
            pool.num_classes,
        )
        extra = {"validation_macro_f1": outcome.validation_macro_f1,
                 "best_epoch": outcome.best_epoch}
    metrics = classification_metrics(data.test_labels, predict(model, data.test_inputs),
                                     data.num_classes)
    return BudgetResult(**base, accuracy=float(metrics["accuracy"]),
                        macro_f1=float(metrics["macro_f1"]),
                        seconds=round(time.monotonic() - start, 1), **extra)
