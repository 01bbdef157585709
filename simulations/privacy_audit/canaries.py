"""Canary records and the node's data set with its canary slots filled by the secret coins.

**Slots, not additions.** The claim under audit is record-level ε for *replace-one*
neighbours (a node releases its record count n, so n is public). Each of the m slots holds
either its canary (coin 1) or one fixed neutral filler record (coin 0), so n, and with it the
Poisson sample rate, is the same whatever the coins: flipping one coin is exactly a
replace-one neighbour, the relation the accountant's ε is stated for.

**What is secret.** Only the coins (drawn from the operating system's CSPRNG). The canaries,
the filler, the slot positions and the other records are all known to the attacker, as
differential privacy's worst case allows (ε holds against an adversary who knows every record
but the one in question); they come from the audit's public seed.

Text canaries: canary i is one random ordinary token t_i repeated over the whole length
([CLS] t_i t_i … t_i [SEP], no padding), with t_i distinct across canaries and among the tokens the real records use least. Unlike any real
record, and built so that its gradient hardly depends on which positions the MLM objective
masks (every label is t_i, every context is t_i): the masks a canary got in training depend on
its batch position, which the secret Poisson sampling decides, so a canary of mixed tokens
would leave a footprint the scorer cannot predict (measured: random-token canaries gave an
AUC of 0.51-0.63 even with no noise at all). Its footprint is concentrated on coordinates
that are nearly its own: the embedding row and decoder row of t_i. The filler is a copy of the
node's first real record: ordinary data.

**Canaries with large gradients.** DP-SGD's guarantee holds for *any* per-record loss: clipping
bounds each record's gradient to C whatever the loss makes it, and the claim assumes nothing
else. The audit uses that freedom the way a worst-case record would: a canary's loss counts
CANARY_LOSS_WEIGHT × C times (`canary_weighted_loss`), so its gradient norm is about a hundred
times C or more, whatever C the run uses. Where clipping works this changes nothing (a clipped
gradient keeps only its direction: C·g/‖g‖ with or without the weight, since the MLM
gradients of the tiny model are already 5-14 at initialisation, above C=1); where clipping is
bypassed, the canary's influence is its whole gradient, far above the C the claim assumes.
With the task's own loss a text record cannot do that: its gradient is bounded by the model
(LayerNorm'd hidden states, a softmax), so bypassing clipping at C=1 only lets it reach a few
times C (planted_bugs.py, docs/privacy-audit.md). The weight is decided by a record's content
alone (a canary is one of the public canary tokens repeated), so the loss stays per-record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# A canary's loss weight, per unit of the clip norm C (see the module doc).
CANARY_LOSS_WEIGHT = 100.0

PerRecordLoss = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class CanaryPlan:
    """The canaries of one trial and where they go (everything but the coins: public)."""

    canaries: tuple[torch.Tensor, ...]  # m records, in the task's record format
    filler: tuple[torch.Tensor, ...]  # one record (rows of length 1)
    slots: torch.Tensor  # [m] positions in the node's data set, canary i in slots[i]
    num_records: int  # n: real records + m slots

    @property
    def size(self) -> int:
        """m, the number of canaries."""
        return len(self.slots)


def text_canaries(count: int, length: int, vocab_size: int, first_ordinary: int, cls_id: int,
                  sep_id: int, real_ids: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` canaries as `(input_ids, attention_mask)`, shape `[count, length]`: canary i is
    one ordinary token t_i repeated over the whole length, the t_i distinct, chosen at random
    among the tokens the node's real records (`real_ids`) use least (unused ones first)."""
    available = vocab_size - first_ordinary
    if count > available:
        raise ValueError(f"--canaries can be at most {available} for this vocabulary "
                         f"(one distinct token each), got {count}")
    uses = torch.bincount(real_ids.flatten(), minlength=vocab_size)[first_ordinary:].double()
    ties = torch.rand(available, generator=generator, dtype=torch.float64)
    tokens = first_ordinary + torch.argsort(uses + ties)[:count]  # a use outweighs any tie
    ids = tokens.view(-1, 1).repeat(1, length)
    ids[:, 0] = cls_id
    ids[:, -1] = sep_id
    return ids, torch.ones((count, length), dtype=torch.long)


def plan_canaries(real: tuple[torch.Tensor, ...], canaries: tuple[torch.Tensor, ...],
                  generator: torch.Generator) -> CanaryPlan:
    """Put m canary slots at random positions among the real records (the filler is the
    first real record)."""
    count = len(canaries[0])
    total = len(real[0]) + count
    slots = torch.randperm(total, generator=generator)[:count]
    return CanaryPlan(canaries=canaries, filler=tuple(t[:1] for t in real), slots=slots,
                      num_records=total)


def secret_coins(count: int) -> np.ndarray:
    """m fair coins from the OS CSPRNG (bool: True = the canary is in its slot)."""
    return np.unpackbits(np.frombuffer(os.urandom((count + 7) // 8), dtype=np.uint8))[
        :count].astype(bool)


def node_records(real: tuple[torch.Tensor, ...], plan: CanaryPlan,
                 coins: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The node's data set: real records, and in each slot its canary (coin) or the filler.

    All-False coins give the data set the attacker replays under the known-seed bug.
    """
    keep = torch.ones(plan.num_records, dtype=torch.bool)
    keep[plan.slots] = False
    chosen = torch.as_tensor(coins, dtype=torch.bool)
    tensors = []
    for real_t, canary_t, filler_t in zip(real, plan.canaries, plan.filler, strict=True):
        out = torch.empty((plan.num_records, *real_t.shape[1:]), dtype=real_t.dtype)
        out[keep] = real_t
        slot_values = torch.where(chosen.view(-1, *[1] * (real_t.dim() - 1)), canary_t,
                                  filler_t.expand_as(canary_t))
        out[plan.slots] = slot_values
        tensors.append(out)
    return tuple(tensors)


def is_canary(input_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`[B]` bool: the row is a canary, one of `tokens` repeated between [CLS] and [SEP]."""
    inner = input_ids[:, 1:-1]
    return (inner == inner[:, :1]).all(dim=1) & torch.isin(inner[:, 0], tokens)


def canary_weighted_loss(per_record_loss: PerRecordLoss, tokens: torch.Tensor,
                         weight: float) -> PerRecordLoss:
    """The task's per-record loss with every canary's term multiplied by `weight` (the
    canaries' tokens are `tokens`): a per-record loss still, so DP-SGD's claim covers it."""
    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...],
             generator: torch.Generator) -> torch.Tensor:
        per_record = per_record_loss(model, batch, generator)
        scale = torch.where(is_canary(batch[0], tokens), weight, 1.0)
        return per_record * scale.to(per_record.dtype)
    return loss
