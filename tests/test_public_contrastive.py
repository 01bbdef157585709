"""The contrastive objective with public negatives is per-record decomposable under DP-SGD.

Two views of the same record form the positive pair; negatives are public texts embedded by
the frozen round-start model. Proofs as for the other tasks: per-sample gradients equal brute
force (each record runs through the encoder twice, once per view, and Opacus sums both),
removing one record moves the clipped sum by exactly that record's own clipped gradient, and
a record's loss does not change when the other records of its batch do.
"""

from __future__ import annotations

import pytest
import torch
from simulation_runs import (
    adapted_tiny_encoder,
    assert_one_record_moves_the_clipped_sum_by_its_own_share,
    assert_per_sample_gradients_equal_brute_force,
    tiny_bert_folder,
)

from common.data.tokenizer import SpecialIds
from common.tasks.public_contrastive import PublicContrastive, delete_tokens

CLIP = 0.05
BATCH = 6
SPECIAL = SpecialIds()


def _tokens(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 14, (rows, 9), generator=generator)
    ids[:, 0], ids[:, -1] = SPECIAL.cls, SPECIAL.sep
    ids[0, 6:] = SPECIAL.pad
    return ids, (ids != SPECIAL.pad).long()


def _model(folder) -> PublicContrastive:
    torch.manual_seed(1)
    return PublicContrastive(adapted_tiny_encoder(folder), SPECIAL, *_tokens(5, seed=9)).double()


@pytest.fixture()
def folder(tmp_path):
    return tiny_bert_folder(tmp_path / "bert")


@pytest.fixture(scope="module")
def views():
    ids, mask = _tokens(BATCH, seed=0)
    generator = torch.Generator().manual_seed(3)
    return (*delete_tokens(ids, mask, SPECIAL, generator),
            *delete_tokens(ids, mask, SPECIAL, generator))


def _loss(model, rows, views) -> torch.Tensor:
    return model(*(v[rows] for v in views)).mean()


def test_views_delete_tokens_but_keep_specials_and_one_token():
    ids, mask = _tokens(200, seed=4)
    view, view_mask = delete_tokens(ids, mask, SPECIAL, torch.Generator().manual_seed(0))
    assert (view[:, 0] == SPECIAL.cls).all()
    kept = view_mask.sum(1)
    assert (kept < mask.sum(1)).any() and (kept >= 3).all()  # [CLS], a token, [SEP]


def test_a_records_loss_ignores_the_other_records(folder, views):
    model = _model(folder).eval()
    with torch.no_grad():
        alone = model(*(v[[2]] for v in views))
        batch = model(*views)[2]
        shuffled = model(*(v[[5, 2, 0]] for v in views))[1]
    torch.testing.assert_close(batch, alone[0])
    torch.testing.assert_close(shuffled, alone[0])


def test_per_sample_gradients_equal_brute_force(folder, views):
    assert_per_sample_gradients_equal_brute_force(
        _model(folder), lambda model, rows: _loss(model, rows, views), BATCH)


def test_removing_one_record_moves_clipped_sum_by_at_most_clip_norm(folder, views):
    assert_one_record_moves_the_clipped_sum_by_its_own_share(
        _model(folder), lambda model, rows: _loss(model, rows, views), BATCH, CLIP)
