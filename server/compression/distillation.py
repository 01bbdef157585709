"""Knowledge distillation of the fine-tuned classifier (the teacher) into a smaller student.

Only data the server may use enters: its labeled set (inputs and labels) and public
"transfer" text (inputs only, e.g. ICD-10 headings); never client records. The teacher's
logits are computed once (`teacher_logits`) and reused every epoch, since the teacher's
forward pass is the slow part. `distill` then trains the student on one pool of labeled and
transfer records with server/evaluation/classifier_training.py's `train_epochs` (the loop of
fine-tuning): AdamW, weight decay on matrices only, linear warmup/decay, shuffling and
dropout seeded from the recipe with the global RNG left untouched, an `on_step(done, total)`
hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from server.evaluation.classifier_training import (
    FinetuneRecipe,
    StepHook,
    _forward_logits,
    num_labels_of,
    train_epochs,
)

# Label of a record that has none (a transfer record); F.cross_entropy's default ignore_index,
# so such a record contributes exactly 0 to the hard-label term.
NO_LABEL = -100

Inputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class DistillRecipe:
    """Distillation hyper-parameters, fixed in advance (never tuned on the test set).

    `schedule` is the training schedule (epochs, batch size, learning rate, weight decay,
    warmup, seed, min_steps), exactly as for fine-tuning, counted over the pool of labeled
    and transfer records.
    """

    schedule: FinetuneRecipe = field(
        default_factory=lambda: FinetuneRecipe(epochs=10, batch_size=64))
    temperature: float = 2.0
    # alpha: weight of cross-entropy on the true label for labeled records; (1 - alpha) goes
    # to their distillation term. Transfer records always carry the full distillation term.
    hard_label_weight: float = 0.5


def teacher_logits(
    teacher: nn.Module,
    inputs: Inputs,
    batch_size: int = 256,
    on_batch: StepHook | None = None,
) -> torch.Tensor:
    """The teacher's logits `[N, C]` (float32), computed in eval mode without gradients.

    Computed once per input set so that every distillation epoch reuses them.
    `on_batch(done, total)`, if given, runs after every batch (counted in batches).
    """
    _check_inputs("inputs", inputs)
    total = len(inputs[0])
    batches = math.ceil(total / batch_size)
    teacher.eval()
    chunks: list[torch.Tensor] = []
    with torch.no_grad():
        for index, start in enumerate(range(0, total, batch_size)):
            chunk = tuple(t[start : start + batch_size] for t in inputs)
            chunks.append(_forward_logits(teacher, chunk).float())
            if on_batch is not None:
                on_batch(index + 1, batches)
    if not chunks:
        return torch.zeros((0, num_labels_of(teacher)), dtype=torch.float32)
    return torch.cat(chunks)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    hard_label_weight: float,
) -> torch.Tensor:
    """Mean per-record distillation loss of one batch (a scalar).

    With T = `temperature`, alpha = `hard_label_weight`, p_t = softmax(teacher / T) and
    p_s = softmax(student / T), each record r has the distillation term
    kd_r = T^2 * KL(p_t || p_s) (T^2 keeps its gradient scale independent of T, Hinton et
    al. 2015) and contributes
      labeled record (labels[r] >= 0):      alpha * CE(student_r, labels[r]) + (1 - alpha) * kd_r
      transfer record (labels[r] == NO_LABEL): kd_r
    The batch loss is the plain mean of these per-record losses over all B records of the
    batch, labeled and transfer alike: every record weighs 1/B, however the batch is mixed.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)
    kd = temperature**2 * F.kl_div(log_student, log_teacher, reduction="none",
                                   log_target=True).sum(dim=-1)
    labeled = labels != NO_LABEL
    # ignore_index makes CE exactly 0 for transfer records: their placeholder label is unused.
    hard = F.cross_entropy(student_logits, labels, ignore_index=NO_LABEL, reduction="none")
    alpha = hard_label_weight
    per_record = torch.where(labeled, alpha * hard + (1.0 - alpha) * kd, kd)
    return per_record.mean()


def distill(
    student: nn.Module,
    labeled: tuple[Inputs, torch.Tensor],
    labeled_teacher: torch.Tensor,
    transfer: Inputs | None,
    transfer_teacher: torch.Tensor | None,
    recipe: DistillRecipe,
    on_step: StepHook | None = None,
) -> nn.Module:
    """Train `student` in place to match the teacher's logits; returns it in eval mode.

    `labeled` is `(inputs, labels)` with `labeled_teacher` the teacher's logits on those
    inputs; `transfer` holds unlabeled inputs with `transfer_teacher` their teacher logits
    (both None for none). Labeled and transfer records form one pool, shuffled together each
    epoch; each batch's loss is `distillation_loss` (the mean over its records). Training is
    `train_epochs` with `recipe.schedule`, counted over the pool: ceil(pool / batch_size)
    steps per epoch, `recipe.schedule.epochs_for(pool)` epochs. With no transfer and
    alpha = 1 it therefore is exactly `train_classifier` with the same schedule.
    `on_step(done, total)`, if given, runs after every optimizer step. Raises ValueError on
    mismatched lengths or logit shapes, labels outside the student's classes, T <= 0, alpha
    outside [0, 1] or a batch size below 1.
    """
    if not recipe.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {recipe.temperature}")
    if not 0.0 <= recipe.hard_label_weight <= 1.0:
        raise ValueError(f"hard_label_weight (alpha) must lie in [0, 1], "
                         f"got {recipe.hard_label_weight}")
    pool_inputs, pool_teacher, pool_labels = _pool(num_labels_of(student), labeled,
                                                   labeled_teacher, transfer, transfer_teacher)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        logits = _forward_logits(student, tuple(t[batch] for t in pool_inputs))
        return distillation_loss(logits, pool_teacher[batch], pool_labels[batch],
                                 recipe.temperature, recipe.hard_label_weight)

    return train_epochs(student, len(pool_labels), recipe.schedule, batch_loss,
                        on_step=on_step)


def _check_inputs(name: str, inputs: Inputs) -> int:
    """Number of records in `inputs`; ValueError unless all tensors have the same length."""
    if len(inputs) == 0:
        raise ValueError(f"{name}: need at least one input tensor")
    lengths = [len(t) for t in inputs]
    if len(set(lengths)) != 1:
        raise ValueError(f"{name}: input tensors differ in length: {lengths}")
    return lengths[0]


def _check_logits(name: str, logits: torch.Tensor, records: int, classes: int) -> None:
    """ValueError unless `logits` is a finite `[records, classes]` tensor."""
    if logits.dim() != 2 or tuple(logits.shape) != (records, classes):
        raise ValueError(f"{name}: teacher logits must have shape [{records}, {classes}] "
                         f"(records, student's num_labels), got {list(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name}: teacher logits contain NaN or inf")


def _pool(classes: int, labeled: tuple[Inputs, torch.Tensor], labeled_teacher: torch.Tensor,
          transfer: Inputs | None, transfer_teacher: torch.Tensor | None
          ) -> tuple[Inputs, torch.Tensor, torch.Tensor]:
    """Validate the records against a student of `classes` classes and concatenate labeled
    and transfer records into one pool: (inputs, teacher logits float32, labels with
    NO_LABEL for transfer records)."""
    inputs, labels = labeled
    labels = torch.as_tensor(labels, dtype=torch.long)
    records = _check_inputs("labeled", inputs)
    if labels.dim() != 1 or len(labels) != records:
        raise ValueError(f"labeled: need one label per record: {records} records, "
                         f"labels of shape {list(labels.shape)}")
    if records and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labeled: labels must lie in [0, {classes}), "
                         f"got {labels.unique().tolist()}")
    _check_logits("labeled", labeled_teacher, records, classes)
    if (transfer is None) != (transfer_teacher is None):
        raise ValueError("transfer inputs and transfer teacher logits come together: "
                         "pass both or neither")
    if transfer is None or transfer_teacher is None:
        if records == 0:
            raise ValueError("nothing to distil on: no labeled and no transfer records")
        return tuple(inputs), labeled_teacher.float(), labels
    extra = _check_inputs("transfer", transfer)
    _check_logits("transfer", transfer_teacher, extra, classes)
    if records + extra == 0:
        raise ValueError("nothing to distil on: no labeled and no transfer records")
    if len(transfer) != len(inputs) or any(
        a.shape[1:] != b.shape[1:] or a.dtype != b.dtype for a, b in zip(inputs, transfer)
    ):
        raise ValueError(
            "labeled and transfer inputs must match tensor for tensor in trailing shape and "
            "dtype (e.g. both tokenized to the same max_length): "
            f"{[(list(t.shape[1:]), t.dtype) for t in inputs]} vs "
            f"{[(list(t.shape[1:]), t.dtype) for t in transfer]}")
    pool_inputs = tuple(torch.cat([a, b]) for a, b in zip(inputs, transfer))
    pool_teacher = torch.cat([labeled_teacher.float(), transfer_teacher.float()])
    pool_labels = torch.cat([labels, torch.full((extra,), NO_LABEL, dtype=torch.long)])
    return pool_inputs, pool_teacher, pool_labels
