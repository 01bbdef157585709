"""Scores: how strongly the server's view says "this canary was in".

Every score is a function of what the server sees (the global models, the node's released
updates) and of public inputs (the canaries, the public seed), never of the coins, so guessing
from it is a post-processing of the release and the one-run bound applies. Higher = "in".

* **white-box** (per round, summed): the projection of the released update on the canary's
  descent direction at that round's global model, ⟨−Δ_r, g_i⟩ / ‖g_i‖, on the input
  embedding row of the canary's token (see `update_projections` for why). Normalising by ‖g_i‖
  (not clipping to C) makes every canary count the same whatever its gradient size: Adam,
  which the node trains with, rescales each coordinate anyway, so the direction is what
  survives into Δ.
* **replay** (white-box against a replay): the same projection of Δ_r − Δ̂_r, where Δ̂_r is
  the update the attacker recomputes from the public round seed with every slot holding the
  filler. If the node's noise and Poisson masks came from that seed (the known-seed bug), the
  noise cancels and only the canaries' influence remains; with secret noise Δ̂_r is just
  another public function, so the score is still a valid (weak) guess. Scored on the
  vocabulary rows (embedding, decoder, bias) of the canary's token: with the other records
  cancelled, the rows that carry most of the canary's gradient are the best.
* **black-box**: how much training lowered the canary's loss, L_initial − L_final, under fixed
  public masks (averaged over a few draws): what someone holding only the final model sees.

The canary's gradient uses the task's own per-record loss with masks from the public seed
(fixed per canary, so round after round it is the same objective).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from common.model_updates import State

PerRecordLoss = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]
SCORE_BATCH = 32  # canaries per per-sample-gradient pass (memory: batch × parameters floats)
LOSS_DRAWS = 4  # mask draws the black-box loss averages over


def _scored_names(model: nn.Module, update: State) -> list[str]:
    """The parameters that are trained and travel in the update (the white-box coordinates)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and name in update]


EMBEDDING_ROWS, VOCABULARY_ROWS = "embedding rows", "vocabulary rows"


def _row_parameters(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """The trained parameters a canary's token indexes a row of: the input embedding, and
    every vocabulary-indexed one (embedding, decoder weight and bias). See `update_projections`."""
    vocab = int(getattr(getattr(model, "_module", model), "vocab_size", -1))
    embeddings = {f"{name}.weight" for name, module in model.named_modules()
                  if isinstance(module, nn.Embedding) and module.num_embeddings == vocab}
    shapes = dict(model.named_parameters())
    return {EMBEDDING_ROWS: [name for name in names if name in embeddings],
            VOCABULARY_ROWS: [name for name in names if shapes[name].shape[0] == vocab]}


def update_projections(model: nn.Module, per_record_loss: PerRecordLoss,
                       canaries: tuple[torch.Tensor, ...], tokens: torch.Tensor,
                       requests: Sequence[tuple[State, str]], mask_seed: int) -> np.ndarray:
    """⟨−u, g_i⟩ / ‖g_i‖ on canary i's own coordinates, for every (update u, coordinate set)
    in `requests` and canary i: shape `[len(requests), m]`.

    A canary's own coordinates are row t_i (its token, `tokens[i]`) of trained parameters the
    vocabulary indexes. EMBEDDING_ROWS, the input embedding's row: only records containing
    t_i move it (the canaries' tokens are the ones the real records use least, canaries.py),
    so it is clean when nothing cancels the other records, but it carries little of the
    canary's gradient. VOCABULARY_ROWS adds the decoder's row and bias entry: most of the
    canary's gradient, but every record's softmax moves them too, and Adam, which moves every
    coordinate with any gradient by about the learning rate, makes that crowd as loud as the
    canary. Measured on the tiny model with no noise (m=256): AUC 0.72 and a clean top on
    embedding rows, 0.85 with a noisier top on vocabulary rows, 0.51-0.63 on all coordinates
    with mixed-token canaries. A set that is empty for this model (frozen embeddings, adapters
    over a frozen encoder) falls back to the vocabulary rows, then to every trained coordinate.

    `model` holds the round's global weights. Its dropout is switched off (Opacus records
    per-sample gradients only in train mode, so eval() is not an option): the gradient is a
    function of the weights and the public mask seed alone.
    """
    names = _scored_names(model, requests[0][0])
    if not names:
        raise ValueError("the update holds none of the model's trainable parameters")
    sets = _row_parameters(model, names)
    rows_known = bool(sets[VOCABULARY_ROWS])
    chosen = {key: sets[key] or sets[VOCABULARY_ROWS] or names for key in sets}
    names = sets[VOCABULARY_ROWS] or names
    params = dict(model.named_parameters())
    frozen = [p for name, p in params.items() if name not in names and p.requires_grad]
    for p in frozen:  # only the scored coordinates need per-sample gradients
        p.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    wrapped.train()
    count = len(canaries[0])
    scores = np.empty((len(requests), count))
    try:
        for start in range(0, count, SCORE_BATCH):
            rows = slice(start, min(start + SCORE_BATCH, count))
            size = rows.stop - rows.start
            batch = tuple(t[rows] for t in canaries)
            wrapped.zero_grad(set_to_none=True)
            for name in names:
                params[name].grad_sample = None
            masks = torch.Generator().manual_seed(mask_seed + start)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Full backward hook.*")
                per_record_loss(wrapped, batch, masks).sum().backward()
            picked = torch.arange(size)
            grads = {}  # name -> [B, d]: each canary's gradient on its coordinates
            for name in names:
                sample = params[name].grad_sample
                grads[name] = (sample[picked, tokens[rows]] if rows_known else sample) \
                    .reshape(size, -1)
            for index, (update, key) in enumerate(requests):
                dots = torch.zeros(size, dtype=torch.float64)
                squares = torch.zeros(size, dtype=torch.float64)
                for name in chosen[key]:
                    descent = -update[name].float()
                    descent = descent[tokens[rows]].reshape(size, -1) if rows_known \
                        else descent.reshape(1, -1)
                    dots += (descent * grads[name]).sum(dim=1).double()
                    squares += grads[name].double().pow(2).sum(dim=1)
                scores[index, rows] = (dots / squares.sqrt().clamp(min=1e-12)).numpy()
    finally:
        wrapped.zero_grad(set_to_none=True)
        wrapped.remove_hooks()
        for p in frozen:
            p.requires_grad_(True)
    return scores


@torch.no_grad()
def canary_losses(model: nn.Module, per_record_loss: PerRecordLoss,
                  canaries: tuple[torch.Tensor, ...], mask_seed: int) -> np.ndarray:
    """Each canary's loss under `model`, averaged over LOSS_DRAWS public mask draws: `[m]`."""
    model.eval()
    count = len(canaries[0])
    total = torch.zeros(count)
    for draw in range(LOSS_DRAWS):
        masks = torch.Generator().manual_seed(mask_seed + 7919 * draw)
        for start in range(0, count, 4 * SCORE_BATCH):
            rows = slice(start, min(start + 4 * SCORE_BATCH, count))
            total[rows] += per_record_loss(model, tuple(t[rows] for t in canaries), masks)
    return (total / LOSS_DRAWS).numpy()
