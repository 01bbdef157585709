"""Distilling the fine-tuned classifier into a small student (server/compression/distillation.py):
the KD term vanishes at teacher = student, soft targets on unlabeled transfer text carry the
teacher's knowledge beyond the few labels, transfer records never use a label, training is
train_classifier's when there is nothing to distil, runs are seeded, and bad inputs are refused."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

from common.run_config import ModelShape
from common.tasks.mlm import bert_config
from server.compression.distillation import (
    NO_LABEL,
    DistillRecipe,
    distill,
    distillation_loss,
    teacher_logits,
)
from server.evaluation.classifier_training import FinetuneRecipe, predict, train_classifier
from server.evaluation.text_classifier import build_classifier

VOCAB, CLASSES, LENGTH = 100, 4, 10


def _bert(seed: int, layers: int = 1) -> nn.Module:
    """A tiny MeanPoolClassifier (a few thousand parameters)."""
    shape = ModelShape(hidden_size=32, num_layers=layers, num_heads=2, intermediate_size=64,
                       max_length=LENGTH)
    return build_classifier(bert_config(shape, vocab_size=VOCAB, num_labels=CLASSES), None,
                            seed=seed)


def _tokens(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (1..VOCAB-1; 0 is padding) and masks, lengths 4..LENGTH."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (count, LENGTH), generator=generator)
    lengths = torch.randint(4, LENGTH + 1, (count,), generator=generator)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


class _BagOfWordsTeacher(nn.Module):
    """A fixed function of the input: mean over tokens of a random per-token score table.

    Learning it takes seeing most of the vocabulary with its scores, which a handful of labels
    cannot give but many teacher-scored transfer inputs can."""

    def __init__(self, seed: int = 7) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(3.0 * torch.randn(VOCAB, CLASSES, generator=generator))
        self.num_labels = CLASSES

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        return (self.table[ids] * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    wb = _weights(b)
    return all(torch.equal(p, wb[name]) for name, p in _weights(a).items())


def _grad_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()
                                if p.grad is not None)))


def test_kd_term_vanishes_when_the_student_is_the_teacher():
    teacher = _bert(seed=0)
    inputs = _tokens(32, seed=1)
    soft = teacher_logits(teacher, inputs, batch_size=10)
    no_labels = torch.full((32,), NO_LABEL)  # transfer records: KD term only

    def kd_loss_and_grad(student: nn.Module) -> tuple[float, float]:
        student.eval()  # as the teacher's logits were taken: no dropout
        student.zero_grad()
        loss = distillation_loss(student(*inputs).logits, soft, no_labels, 2.0, 0.5)
        loss.backward()
        return loss.item(), _grad_norm(student)

    same_loss, same_grad = kd_loss_and_grad(copy.deepcopy(teacher))
    assert abs(same_loss) < 1e-6 and same_grad < 1e-5
    other_loss, other_grad = kd_loss_and_grad(_bert(seed=1))
    assert other_loss > 1e-4 and other_grad > 1e3 * max(same_grad, 1e-9)


def test_loss_form_per_record_and_mean_over_the_batch():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    temp = 3.0
    ce = nn.functional.cross_entropy(student, torch.tensor([0, 2]), reduction="none")
    p_t = torch.softmax(teacher / temp, -1)
    kd = temp**2 * (p_t * (p_t.log() - torch.log_softmax(student / temp, -1))).sum(-1)
    # Record 0 labeled (class 0), record 1 transfer: alpha reaches only the labeled record.
    labels = torch.tensor([0, NO_LABEL])
    for alpha in (0.0, 0.3, 1.0):
        expected = ((alpha * ce[0] + (1 - alpha) * kd[0]) + kd[1]) / 2
        got = distillation_loss(student, teacher, labels, temp, alpha)
        assert torch.allclose(got, expected, atol=1e-6)
    both = distillation_loss(student, teacher, torch.tensor([0, 2]), temp, 1.0)
    assert torch.allclose(both, ce.mean(), atol=1e-6)  # alpha = 1, all labeled: plain CE


def test_teacher_logits_are_batched_eval_mode_forward_passes():
    teacher = _bert(seed=0)
    teacher.train()  # dropout on: teacher_logits must switch it off
    inputs = _tokens(25, seed=3)
    calls: list[tuple[int, int]] = []
    logits = teacher_logits(teacher, inputs, batch_size=10,
                            on_batch=lambda done, total: calls.append((done, total)))
    assert logits.shape == (25, CLASSES) and logits.dtype == torch.float32
    assert not logits.requires_grad and not teacher.training
    with torch.no_grad():
        assert torch.allclose(logits, teacher(*inputs).logits, atol=1e-5)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_distillation_on_transfer_text_beats_training_on_the_labels_alone():
    teacher = _BagOfWordsTeacher()
    few = _tokens(8, seed=10)  # 8 labels: 2 per class on average
    few_labels = teacher_logits(teacher, few).argmax(-1)
    transfer = _tokens(1000, seed=11)
    held_out = _tokens(400, seed=12)
    agreed = teacher_logits(teacher, held_out).argmax(-1).numpy()

    recipe = DistillRecipe(FinetuneRecipe(epochs=6, batch_size=64, learning_rate=3e-3),
                           temperature=2.0)
    steps: list[int] = []
    distilled = distill(_bert(seed=1), (few, few_labels), teacher_logits(teacher, few),
                        transfer, teacher_logits(teacher, transfer), recipe,
                        on_step=lambda done, total: steps.append(total))
    # The same number of steps, on the labels alone (alpha = 1: plain cross-entropy).
    labels_only = distill(_bert(seed=1), (few, few_labels), teacher_logits(teacher, few),
                          None, None, dataclasses.replace(
                              recipe, hard_label_weight=1.0,
                              schedule=dataclasses.replace(recipe.schedule,
                                                           min_steps=steps[-1])))
    kd_agreement = float((predict(distilled, held_out) == agreed).mean())
    ce_agreement = float((predict(labels_only, held_out) == agreed).mean())
    print(f"teacher agreement: distilled {kd_agreement:.3f}, labels only {ce_agreement:.3f}")
    assert kd_agreement >= 0.7
    assert kd_agreement >= ce_agreement + 0.2


def test_without_transfer_and_alpha_one_it_is_train_classifier():
    inputs, labels = _tokens(40, seed=4), torch.arange(40) % CLASSES
    finetune = FinetuneRecipe(epochs=3, batch_size=16, seed=5, min_steps=10)
    recipe = DistillRecipe(finetune, hard_label_weight=1.0)
    steps: list[tuple[int, int]] = []
    # Teacher logits that disagree with the labels: alpha = 1 must ignore them entirely.
    contrary = 5.0 * nn.functional.one_hot((labels + 1) % CLASSES, CLASSES).float()
    student = distill(_bert(seed=2), (inputs, labels), contrary, None, None, recipe,
                      on_step=lambda done, total: steps.append((done, total)))
    plain = train_classifier(_bert(seed=2), inputs, labels, finetune)
    assert not student.training
    assert steps == [(done, 12) for done in range(1, 13)]  # min_steps: 4 epochs of 3 steps
    reference = _weights(plain)
    for name, value in _weights(student).items():
        assert torch.allclose(value, reference[name], atol=1e-5), name


def test_transfer_records_use_no_label_so_alpha_cannot_touch_them():
    teacher = _bert(seed=0)
    transfer = _tokens(48, seed=6)
    soft = teacher_logits(teacher, transfer)
    empty = (tuple(t[:0] for t in transfer), torch.zeros(0, dtype=torch.long))

    def transfer_only(alpha: float) -> nn.Module:
        recipe = DistillRecipe(FinetuneRecipe(epochs=2, batch_size=16), hard_label_weight=alpha)
        return distill(_bert(seed=3), empty, soft[:0], transfer, soft, recipe)

    start = _bert(seed=3)
    full_kd, half, all_hard = transfer_only(0.0), transfer_only(0.5), transfer_only(1.0)
    assert not _same_weights(full_kd, start)  # it trained, on the KD term alone
    assert _same_weights(full_kd, half) and _same_weights(full_kd, all_hard)


def test_same_seed_same_student_and_the_global_rng_is_untouched():
    teacher = _bert(seed=0)
    labeled, transfer = _tokens(12, seed=7), _tokens(36, seed=8)
    labels = torch.arange(12) % CLASSES
    soft_labeled = teacher_logits(teacher, labeled)
    soft_transfer = teacher_logits(teacher, transfer)

    def run(seed: int) -> nn.Module:
        recipe = DistillRecipe(FinetuneRecipe(epochs=2, batch_size=16, seed=seed))
        return distill(_bert(seed=1), (labeled, labels), soft_labeled, transfer,
                       soft_transfer, recipe)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run(seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(first, run(seed=0))
    assert not _same_weights(first, run(seed=1))  # the seed drives shuffling and dropout


def _bad_cases() -> list[tuple[str, dict, str]]:
    return [
        ("labels one short", {"labels": torch.arange(7) % CLASSES}, "one label per record"),
        ("label out of range", {"labels": torch.full((8,), CLASSES)}, "labels must lie in"),
        ("negative label", {"labels": torch.full((8,), -1)}, "labels must lie in"),
        ("inputs of unequal length", {"inputs": (torch.ones(8, LENGTH).long(),
                                                  torch.ones(7, LENGTH).long())},
         "differ in length"),
        ("labeled logits wrong classes", {"labeled_teacher": torch.zeros(8, CLASSES + 1)},
         "must have shape [8, 4]"),
        ("labeled logits wrong count", {"labeled_teacher": torch.zeros(9, CLASSES)},
         "must have shape [8, 4]"),
        ("labeled logits NaN", {"labeled_teacher": torch.full((8, CLASSES), float("nan"))},
         "NaN"),
        ("transfer logits wrong count", {"transfer_teacher": torch.zeros(5, CLASSES)},
         "transfer: teacher logits must have shape [6, 4]"),
        ("transfer without logits", {"transfer_teacher": None}, "pass both or neither"),
        ("transfer padded differently", {"transfer": (torch.ones(6, 3).long(),
                                                      torch.ones(6, 3).long())},
         "same max_length"),
        ("zero temperature", {"recipe": DistillRecipe(temperature=0.0)}, "temperature"),
        ("alpha above one", {"recipe": DistillRecipe(hard_label_weight=1.5)}, "[0, 1]"),
        ("alpha below zero", {"recipe": DistillRecipe(hard_label_weight=-0.1)}, "[0, 1]"),
        ("zero batch size", {"recipe": DistillRecipe(FinetuneRecipe(batch_size=0))},
         "batch_size >= 1"),
        ("nothing at all", {"inputs": (torch.ones(0, LENGTH).long(),) * 2,
                            "labels": torch.zeros(0, dtype=torch.long),
                            "labeled_teacher": torch.zeros(0, CLASSES),
                            "transfer": None, "transfer_teacher": None}, "nothing to distil"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda case: case[0])
def test_bad_inputs_are_refused_with_a_clear_message(case):
    _, overrides, message = case
    args = {"inputs": _tokens(8, seed=9), "labels": torch.arange(8) % CLASSES,
            "labeled_teacher": torch.zeros(8, CLASSES), "transfer": _tokens(6, seed=9),
            "transfer_teacher": torch.zeros(6, CLASSES),
            "recipe": DistillRecipe(FinetuneRecipe(epochs=1))}
    args.update(overrides)
    student = _bert(seed=0)
    before = _weights(student)
    with pytest.raises(ValueError, match=re.escape(message)):
        distill(student, (args["inputs"], args["labels"]), args["labeled_teacher"],
                args["transfer"], args["transfer_teacher"], args["recipe"])
    assert all(torch.equal(p, before[n]) for n, p in _weights(student).items())
