"""Central downstream stage, for any task: fine-tune a classifier on the few labels, score it.

The same `FinetuneRecipe` is used for the pretrained model and the from-scratch baseline, so
the only difference between the two arms is the starting weights. Inputs stay with the
caller: a model is called as `model(*inputs)` and returns logits (or an output with
`.logits`), e.g. `(input_ids, attention_mask)` for text, `(images,)` for images.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning hyper-parameters, fixed in advance (never tuned on the test set)."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0
    # Tiny labeled sets get this many optimizer steps at least (more epochs): 30 epochs of 22
    # labels would be 30 steps, too few to fit even a linear head.
    min_steps: int = 0

    def epochs_for(self, num_labels: int) -> int:
        """Epochs to run on `num_labels` records: `epochs`, or more to reach `min_steps`."""
        steps_per_epoch = math.ceil(num_labels / self.batch_size)
        return max(self.epochs, math.ceil(self.min_steps / max(steps_per_epoch, 1)))


StepHook = Callable[[int, int], None]  # (optimizer steps done, steps planned)


def _forward_logits(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = model(*inputs)
    return out.logits if hasattr(out, "logits") else out


def num_labels_of(model: nn.Module) -> int:
    """Classes a classifier predicts (`num_labels`, or a transformers model's config)."""
    count = getattr(model, "num_labels", None)
    return int(count if count is not None else model.config.num_labels)


def train_classifier(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    recipe: FinetuneRecipe,
    progress: Callable[[str], None] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
    on_step: StepHook | None = None,
) -> nn.Module:
    """Fine-tune `model` in place on `labels` with cross-entropy (`train_epochs`); returns it.

    Raises ValueError unless all inputs and the labels have the same non-zero length and
    every label is one of the model's classes. The hooks are `train_epochs`'s.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    sizes = {len(t) for t in inputs} | {len(labels)}
    if len(sizes) != 1 or len(labels) == 0:
        raise ValueError(f"need equal, non-zero lengths: {[len(t) for t in inputs]}, "
                         f"{len(labels)}")
    num_labels = num_labels_of(model)
    if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(f"labels must lie in [0, {num_labels}), got {labels.unique().tolist()}")

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        logits = _forward_logits(model, tuple(t[batch] for t in inputs))
        return F.cross_entropy(logits, labels[batch])

    return train_epochs(model, len(labels), recipe, batch_loss, on_step=on_step,
                        after_epoch=after_epoch, progress=progress)


def train_epochs(
    model: nn.Module,
    size: int,
    recipe: FinetuneRecipe,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    on_step: StepHook | None = None,
    after_epoch: Callable[[int], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train `model` in place on `size` records with AdamW and a linear warmup/decay schedule;
    returns it in eval mode. The one training loop of fine-tuning and distillation.

    Each epoch shuffles the record indices `0..size-1` and cuts them into batches of
    `recipe.batch_size`; `batch_loss(indices)` runs the forward pass on those records and
    returns the scalar loss to minimise. `recipe.epochs_for(size)` epochs of
    ceil(size / batch_size) steps; the learning rate warms up linearly over the first
    `warmup_fraction` of the steps, then decays linearly to 0.
    Shuffling and dropout are seeded from `recipe.seed` (the global RNG is left untouched).
    Weight decay applies to matrices only, not to biases or norm gains; only parameters that
    require grad are optimized. Works with `torch.nn.utils.prune` reparametrisation in place:
    the optimizer updates `weight_orig` and the pruning hook re-applies the mask on every
    forward, so pruned weights stay zero.
    `on_step(done, total)`, if given, runs after every optimizer step
    (server/evaluation/evaluation_progress.py throttles it into progress lines).
    `progress`, if given, receives one line per epoch with the mean training loss.
    `after_epoch(epoch)`, if given, runs after each epoch (model in eval mode); returning True
    stops training early. Raises ValueError unless `size` and `recipe.batch_size` are >= 1.
    """
    if size < 1 or recipe.batch_size < 1:
        raise ValueError(f"need size >= 1 and batch_size >= 1, got {size}, {recipe.batch_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=recipe.learning_rate,
    )
    steps_per_epoch = math.ceil(size / recipe.batch_size)
    epochs = recipe.epochs_for(size)
    total_steps = max(epochs * steps_per_epoch, 1)
    warmup_steps = int(recipe.warmup_fraction * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(recipe.seed)

    done_steps = 0
    model.train()
    # fork_rng: dropout draws from the global RNG; seed it here without leaking to the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        for epoch in range(epochs):
            order = torch.randperm(size, generator=generator)
            loss_sum = 0.0
            for start in range(0, size, recipe.batch_size):
                batch = order[start : start + recipe.batch_size]
                loss = batch_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(batch)
                done_steps += 1
                if on_step is not None:
                    on_step(done_steps, total_steps)
            if progress is not None:
                progress(
                    f"epoch {epoch + 1}/{epochs} loss {loss_sum / size:.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e}"
                )
            if after_epoch is not None:
                model.eval()
                stop = after_epoch(epoch)
                model.train()
                if stop:
                    break
    model.eval()
    return model


def freeze(modules: list[nn.Module]) -> int:
    """Stop training `modules` (train_classifier only optimizes parameters that require
    grad); returns how many parameter values were frozen."""
    frozen = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


@dataclass(frozen=True)
class EarlyStopped:
    """Outcome of `train_early_stopped`: the chosen epoch and its validation macro-F1."""

    best_epoch: int  # 1-based
    validation_macro_f1: float


def early_stopping_patience(recipe: FinetuneRecipe, num_labels: int, patience: int) -> int:
    """`patience` is meant in the recipe's nominal epochs; when `min_steps` stretches a tiny
    labeled set into many one-step epochs, stretch patience by the same factor. Otherwise it
    would stop inside the warm-up, a few optimizer steps in (measured: macro-F1 0.03–0.10 at
    5 images per class, far below plain fine-tuning)."""
    stretch = recipe.epochs_for(num_labels) / max(recipe.epochs, 1)
    return max(patience, math.ceil(patience * stretch))


def train_early_stopped(
    model: nn.Module,
    train: tuple[tuple[torch.Tensor, ...], torch.Tensor],
    validation: tuple[tuple[torch.Tensor, ...], np.ndarray],
    recipe: FinetuneRecipe,
    num_classes: int,
    patience: int = 5,
    on_step: StepHook | None = None,
) -> EarlyStopped:
    """Fine-tune with `recipe` for at most its epochs; keep the epoch best on validation.

    Validation macro-F1 is measured after every epoch; training stops after `patience` epochs
    without improvement (stretched like the schedule, see `early_stopping_patience`), and the
    model is left with the weights of the best epoch. Only the validation split (carved from
    the labeled set) guides this, never the test split.
    """
    patience = early_stopping_patience(recipe, len(train[1]), patience)
    val_inputs, val_labels = validation
    best = {"score": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}

    def after_epoch(epoch: int) -> bool:
        score = float(classification_metrics(val_labels, predict(model, val_inputs),
                                             num_classes)["macro_f1"])
        if score > best["score"]:
            best.update(score=score, epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))
        return epoch + 1 - int(best["epoch"]) >= patience

    train_classifier(model, train[0], train[1], recipe, after_epoch=after_epoch,
                     on_step=on_step)
    model.load_state_dict(best["state"])
    model.eval()
    return EarlyStopped(best_epoch=int(best["epoch"]), validation_macro_f1=float(best["score"]))


def predict(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int = 512
) -> np.ndarray:
    """Predicted class ids `[N]` (int64), computed in eval mode without gradients."""
    model.eval()
    out: list[torch.Tensor] = []
    total = len(inputs[0])
    with torch.no_grad():
        for start in range(0, total, batch_size):
            chunk = tuple(t[start : start + batch_size] for t in inputs)
            out.append(_forward_logits(model, chunk).argmax(dim=-1))
    if not out:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(out).numpy().astype(np.int64)


def classification_metrics(
    y_true: np.ndarray | list[int], y_pred: np.ndarray | list[int], num_classes: int
) -> dict[str, float | int]:
    """Accuracy and macro-F1 of `y_pred` against `y_true`.

    Macro-F1 averages per-class F1 over the classes present in the TEST labels (`y_true`),
    with `zero_division=0`. A class present in test but absent from the labeled training set
    (the model cannot predict it) therefore counts as F1 = 0 and pulls the mean down; a class
    absent from test does not enter the mean (predicting it only costs recall elsewhere).
    Returns `accuracy`, `macro_f1` and `num_test_classes` (the number of classes averaged).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal non-empty 1-d arrays, got {y_true.shape}, {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} has class ids outside [0, {num_classes})")
    test_classes = np.unique(y_true)
    macro_f1 = f1_score(
        y_true, y_pred, labels=test_classes, average="macro", zero_division=0
    )
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(macro_f1),
        "num_test_classes": len(test_classes),
    }
