"""Central downstream stage: fine-tune a BERT text classifier on the few labels, and score it.

The same `FinetuneRecipe` is used for the pretrained model and the from-scratch baseline, so
the only difference between the two arms is the starting weights. Text encoding stays with
the caller: everything here takes token-id tensors.

The classifier mean-pools the encoder's token states instead of using BERT's [CLS] pooler:
with 598 ICD-10 labels (default shape and recipe) the stock [CLS]+tanh-pooler head underfit
(train loss 0.57, test accuracy 0.69 / macro-F1 0.14) where mean pooling reached 0.81 / 0.46,
in line with REFERENCE.md's trial, which also mean-pooled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning hyper-parameters, fixed in advance (never tuned on the test set)."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0


class MeanPoolClassifier(BertForSequenceClassification):
    """`BertForSequenceClassification` that classifies the mask-weighted mean of token states.

    The [CLS] pooler is removed (`bert.pooler is None`), so it neither trains nor gets pruned;
    `model(input_ids=..., attention_mask=...).logits` works as for the parent class.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert.pooler = None

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: object
    ) -> SequenceClassifierOutput:
        """Logits `[B, num_labels]` from the mean of non-padding token states."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def build_classifier(
    config: BertConfig,
    encoder_weights: dict[str, torch.Tensor] | None,
    seed: int | None = None,
) -> BertForSequenceClassification:
    """A randomly initialised `MeanPoolClassifier`, its encoder optionally pretrained.

    `encoder_weights` uses `BertModel` keys without the pooler (as
    `common.mlm_task.encoder_state` returns; the classifier has no pooler either). A missing
    pooler is tolerated; any other missing or unexpected key raises `ValueError`, and a shape
    mismatch raises torch's `RuntimeError`. The classification head stays randomly
    initialised. `seed` makes the random init reproducible without touching the global RNG;
    without it, init follows torch's global seed.
    """
    if seed is None:
        model = MeanPoolClassifier(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MeanPoolClassifier(config)
    if encoder_weights is not None:
        result = model.bert.load_state_dict(encoder_weights, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                "encoder weights do not match the classifier's encoder: "
                f"missing {missing}, unexpected {list(result.unexpected_keys)}"
            )
    return model


def _forward_logits(
    model: BertForSequenceClassification, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits


def train_classifier(
    model: BertForSequenceClassification,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    recipe: FinetuneRecipe,
    progress: Callable[[str], None] | None = None,
) -> BertForSequenceClassification:
    """Fine-tune `model` in place with AdamW and a linear warmup/decay schedule; returns it.

    Shuffling and dropout are seeded from `recipe.seed` (the global RNG is left untouched).
    Weight decay applies to matrices only, not to biases or LayerNorm gains. Works with
    `torch.nn.utils.prune` reparametrisation in place: the optimizer updates `weight_orig`
    and the pruning hook re-applies the mask on every forward, so pruned weights stay zero.
    `progress`, if given, receives one line per epoch with the mean training loss.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if not (len(ids) == len(mask) == len(labels)) or len(ids) == 0:
        raise ValueError(f"need equal, non-zero lengths: {len(ids)}, {len(mask)}, {len(labels)}")
    num_labels = model.config.num_labels
    if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(f"labels must lie in [0, {num_labels}), got {labels.unique().tolist()}")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=recipe.learning_rate,
    )
    steps_per_epoch = math.ceil(len(ids) / recipe.batch_size)
    total_steps = max(recipe.epochs * steps_per_epoch, 1)
    warmup_steps = int(recipe.warmup_fraction * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(recipe.seed)

    model.train()
    # fork_rng: dropout draws from the global RNG; seed it here without leaking to the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(ids), generator=generator)
            loss_sum = 0.0
            for start in range(0, len(ids), recipe.batch_size):
                batch = order[start : start + recipe.batch_size]
                logits = _forward_logits(model, ids[batch], mask[batch])
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(batch)
            if progress is not None:
                progress(
                    f"epoch {epoch + 1}/{recipe.epochs} loss {loss_sum / len(ids):.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e}"
                )
    model.eval()
    return model


def predict(
    model: BertForSequenceClassification,
    ids: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = 512,
) -> np.ndarray:
    """Predicted class ids `[N]` (int64), computed in eval mode without gradients."""
    model.eval()
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            logits = _forward_logits(
                model, ids[start : start + batch_size], mask[start : start + batch_size]
            )
            out.append(logits.argmax(dim=-1))
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
        "num_test_classes": int(len(test_classes)),
    }
