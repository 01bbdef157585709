"""Contrastive self-supervision that DP-SGD can clip per record: public negatives only.

SimCLR-style objectives take every other record of the batch as a negative, so one record's
loss depends on the others and clipping that record's gradient no longer bounds its influence.
Here the positive pair is two augmented views of the *same* record (token deletion, plus the
encoder's own dropout), and the negatives are *public* texts embedded once per round by the
round's frozen global model: constants that depend on no private record. Each record's loss
is then a function of that record alone (tests/test_public_contrastive.py proves it the way
the MLM and MAE tasks prove theirs).

Loss of record i, with z = normalised projection of the mean-pooled encoder states, τ the
temperature and n_k the K public negatives:
    ℓ_i = −log( e^{z1·z2/τ} / (e^{z1·z2/τ} + Σ_k e^{z1·n_k/τ}) ), symmetrised over the views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.data.tokenizer import SpecialIds
from common.tasks.public_encoder import encode, trainable_names

DELETE_PROB = 0.15  # share of a view's ordinary tokens deleted
TEMPERATURE = 0.05
PROJECTION_DIM = 128


class PublicContrastive(nn.Module):
    """Frozen public encoder + adapters + a trainable projection; `forward` returns each
    record's contrastive loss `[B]` against the public negatives."""

    def __init__(self, encoder: nn.Module, special: SpecialIds, negative_ids: torch.Tensor,
                 negative_mask: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.special_ids = special
        self.projection = nn.Linear(int(encoder.config.hidden_size), PROJECTION_DIM)
        # Public texts, tokenized; embedded lazily by `negatives()` with the weights the round
        # started from (not saved with the model: they are a public input).
        self.register_buffer("negative_ids", negative_ids, persistent=False)
        self.register_buffer("negative_mask", negative_mask, persistent=False)
        self._negatives: torch.Tensor | None = None

    @property
    def federated_keys(self) -> tuple[str, ...]:
        return trainable_names(self)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised projections `[B, P]` of the mean-pooled token states."""
        states = encode(self.encoder, input_ids, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(self.projection(pooled), dim=-1)

    def negatives(self) -> torch.Tensor:
        """The public negatives `[K, P]`, embedded once, before any local step, without
        gradient (constants for every record of the round)."""
        if self._negatives is None:
            training = self.training
            self.eval()  # no dropout: the same constants whoever computes them
            with torch.no_grad():
                self._negatives = self.embed(self.negative_ids, self.negative_mask).detach()
            self.train(training)
        return self._negatives

    def forward(self, view1: torch.Tensor, mask1: torch.Tensor, view2: torch.Tensor,
                mask2: torch.Tensor) -> torch.Tensor:
        negatives = self.negatives()
        z1, z2 = self.embed(view1, mask1), self.embed(view2, mask2)
        return (_view_loss(z1, z2, negatives) + _view_loss(z2, z1, negatives)) / 2


def _view_loss(anchor: torch.Tensor, positive: torch.Tensor,
               negatives: torch.Tensor) -> torch.Tensor:
    """−log softmax of the positive among {positive} ∪ negatives, per record: `[B]`."""
    positive_logit = (anchor * positive).sum(-1, keepdim=True)
    logits = torch.cat([positive_logit, anchor @ negatives.T], dim=1) / TEMPERATURE
    return -F.log_softmax(logits, dim=1)[:, 0]


def delete_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, ids: SpecialIds,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A view of each record with a random DELETE_PROB of its ordinary tokens removed (at
    least one kept), left-packed and padded; drawn per record from `generator`."""
    special = (input_ids == ids.pad) | (input_ids == ids.cls) | (input_ids == ids.sep)
    drop = (torch.rand(input_ids.shape, generator=generator) < DELETE_PROB) & ~special
    ordinary = (~special) & (attention_mask > 0)
    everything = (drop | ~ordinary).all(dim=1) & ordinary.any(dim=1)
    drop[everything] = False  # never delete a record's every token
    keep = ~drop & (attention_mask > 0)
    view = torch.full_like(input_ids, ids.pad)
    for row in range(len(input_ids)):
        kept = input_ids[row][keep[row]]
        view[row, : len(kept)] = kept
    return view, (view != ids.pad).long()


def per_record_loss(model: nn.Module, batch: tuple[torch.Tensor, ...],
                    generator: torch.Generator) -> torch.Tensor:
    """Two views of every record, and each record's own contrastive loss, shape `[B]`."""
    input_ids, attention_mask = batch
    inner = getattr(model, "_module", model)
    view1, mask1 = delete_tokens(input_ids, attention_mask, inner.special_ids, generator)
    view2, mask2 = delete_tokens(input_ids, attention_mask, inner.special_ids, generator)
    return model(view1, mask1, view2, mask2)
