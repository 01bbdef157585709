"""One downstream arm: an encoder (pretrained or scratch), labeled records, a recipe → test metrics.

Both downstream stages measure every arm here: `fedssl simulate` (pipeline.run_downstream, on
the run's own labeled set) and `fedssl sweep` (`evaluate_budget`, once per label budget, recipe
and seed). Every arm of a run or sweep cell sees exactly the same labeled records (a sweep cell:
`common.data.label_budgets.select_labeled`), the same validation split carved from them, and
the same test split; scratch and pretrained encoders share the recipe, so only the starting
weights differ. Recipes:

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
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from common.data.label_budgets import LabelBudget, select_labeled, validation_split
from common.run_config import RunConfig
from server.evaluation.classifier_training import (
    FinetuneRecipe,
    StepHook,
    classification_metrics,
    freeze,
    predict,
    train_classifier,
    train_early_stopped,
)
from server.evaluation.downstream_kit import DownstreamKit, LabeledData

RECIPES = ("finetune", "finetune-es", "finetune-top", "probe")
VALIDATION_FRACTION = 0.2
Metrics = dict[str, float | int]


def finetune_recipe(config: RunConfig) -> FinetuneRecipe:
    """The run's fine-tuning recipe: the same for every arm, so only the start differs."""
    return FinetuneRecipe(
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch_size,
        learning_rate=config.finetune_learning_rate,
        seed=config.seed,
        min_steps=config.finetune_min_steps,
    )


def evaluate_classifier(model: nn.Module, data: LabeledData) -> Metrics:
    """Accuracy, macro-F1 and test classes of a trained classifier on the test split."""
    return classification_metrics(data.test_labels, predict(model, data.test_inputs),
                                  data.num_classes)


def evaluate_arm(
    kit: DownstreamKit,
    data: LabeledData,
    encoder_weights: dict[str, torch.Tensor] | None,
    recipe: str,
    training: FinetuneRecipe,
    on_step: StepHook | None = None,
) -> tuple[Metrics | None, nn.Module | None]:
    """Train/score one arm on `data`'s labels; `encoder_weights` None = scratch.

    `recipe` is one of RECIPES or `classical` (which ignores `encoder_weights`). Returns the
    test metrics with `seconds` (None: the recipe cannot run on these labels) and, for the
    fine-tuning recipes, the trained classifier. `on_step` follows the fine-tuning's steps.
    """
    start = time.monotonic()
    model = None
    if recipe == "classical":
        metrics = kit.run_classical(data)
    elif recipe == "probe":
        metrics = kit.probe(data, encoder_weights)
    elif recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}, classical")
    else:
        model = kit.build_classifier(encoder_weights)
        if recipe == "finetune-es":
            stopped = _train_early_stopped(kit, data, model, training, on_step)
            if stopped is None:
                return None, None
        else:
            if recipe == "finetune-top":
                freeze(kit.lower_layers(model))
            train_classifier(model, data.train_inputs, data.train_labels, training,
                             on_step=on_step)
            stopped = {}
        metrics = {**evaluate_classifier(model, data), **stopped}
    return {**metrics, "seconds": round(time.monotonic() - start, 1)}, model


def _train_early_stopped(kit: DownstreamKit, data: LabeledData, model: nn.Module,
                         training: FinetuneRecipe, on_step: StepHook | None = None
                         ) -> Metrics | None:
    """`finetune-es` on a validation split carved from `data`'s labels (None: no class has
    2 labels); returns the chosen epoch and its validation macro-F1."""
    labels = data.train_labels.numpy()
    split = validation_split(labels, VALIDATION_FRACTION, kit.seed)
    if split is None:
        return None
    train_idx, val_idx = (torch.as_tensor(i) for i in split)
    outcome = train_early_stopped(
        model,
        (tuple(t[train_idx] for t in data.train_inputs), data.train_labels[train_idx]),
        (tuple(t[val_idx] for t in data.train_inputs), labels[val_idx.numpy()]),
        training,
        data.num_classes,
        on_step=on_step,
    )
    return {"validation_macro_f1": outcome.validation_macro_f1, "best_epoch": outcome.best_epoch}


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
    """`evaluate_arm` on `budget` labels of the kit's pool, selected with `config.seed`."""
    chosen = select_labeled(kit.data.train_labels.numpy(), budget, config.seed)
    data = kit.data.subset(chosen)
    base = {"n_labels": len(chosen), "classes_labeled": len(np.unique(data.train_labels.numpy()))}
    metrics, _ = evaluate_arm(kit, data, encoder_weights, recipe, finetune_recipe(config))
    if metrics is None:
        return BudgetResult(**base, applicable=False)
    known = {f.name for f in fields(BudgetResult)}
    return BudgetResult(**base, **{k: v for k, v in metrics.items() if k in known})
