"""The MLM objective under Opacus: exact per-sample gradients and per-record sensitivity ≤ C."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from opacus.optimizers import DPOptimizer

from common.tasks.mlm import mask_tokens, per_sequence_loss

CLIP = 0.05  # small enough that every per-record gradient here is actually clipped


def _masked(batch, vocab_size):
    ids, mask = batch
    corrupted, positions, labels = mask_tokens(ids, vocab_size, torch.Generator().manual_seed(3))
    return corrupted, mask, positions, labels


def _loss(model, rows, inputs) -> torch.Tensor:
    corrupted, mask, positions, labels = (t[rows] for t in inputs)
    return per_sequence_loss(model(corrupted, mask, positions), labels).mean()


def _brute_force_grads(model, inputs, row) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loss(model, [row], inputs).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_masking_is_bert_style_and_never_empty(icd_batch, tokenizer):
    ids, _ = icd_batch
    big = ids.repeat(50, 1)
    corrupted, positions, labels = mask_tokens(big, tokenizer.get_vocab_size(),
                                               torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen.sum(dim=1).min() >= 1  # every sequence has a loss term
    maskable = (big > 4).sum()  # ids 0..4 are special tokens
    assert 0.12 < chosen.sum() / maskable < 0.22
    picked = torch.gather(corrupted, 1, positions)[chosen]
    share_mask = (picked == 4).float().mean()
    assert 0.7 < share_mask < 0.9
    assert torch.equal(torch.gather(big, 1, positions)[chosen], labels[chosen])


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_per_sample_gradients_equal_brute_force(tiny_mlm, icd_batch, tokenizer, mode):
    inputs = _masked(icd_batch, tokenizer.get_vocab_size())
    batch = len(inputs[0])
    reference = copy.deepcopy(tiny_mlm)  # plain autograd, no Opacus hooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "ew":  # benchmarks/mlm_step_time.md: measured, not the default
            gsm = GradSampleModuleExpandedWeights(tiny_mlm, batch_first=True,
                                                  loss_reduction="mean")
        else:
            gsm = GradSampleModule(tiny_mlm, batch_first=True, loss_reduction="mean",
                                   force_functorch=(mode == "functorch"))
        _loss(gsm, list(range(batch)), inputs).backward()
    params = [p for p in gsm.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None for p in params), "a parameter has no per-sample grad"
    per_sample = [p.grad_sample.detach().clone() for p in params]
    assert len(per_sample) == len(list(reference.parameters()))
    for row in range(batch):
        expected = _brute_force_grads(reference, inputs, row)
        for got, exp in zip(per_sample, expected, strict=True):
            # loss_reduction="mean" scales per-sample grads back to the per-record loss
            torch.testing.assert_close(got[row], exp, rtol=1e-6, atol=1e-9)


def _clipped_sum(optimizer, model, rows, inputs) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loss(model, rows, inputs).backward()
    optimizer.clip_and_accumulate()
    return torch.cat([p.summed_grad.flatten() for p in optimizer.params])


def test_removing_one_record_moves_clipped_sum_by_at_most_clip_norm(
    tiny_mlm, icd_batch, tokenizer
):
    inputs = _masked(icd_batch, tokenizer.get_vocab_size())
    batch = len(inputs[0])
    gsm = GradSampleModule(tiny_mlm, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                            max_grad_norm=CLIP, expected_batch_size=batch)
    everyone = list(range(batch))
    full = _clipped_sum(optimizer, gsm, everyone, inputs)
    for removed in everyone:
        rest = [r for r in everyone if r != removed]
        without = _clipped_sum(optimizer, gsm, rest, inputs)
        alone = _clipped_sum(optimizer, gsm, [removed], inputs)
        change = full - without
        # Exact decomposition: the change is that record's own clipped gradient, no coupling
        # with the others (a batch-level token average would break this) ...
        torch.testing.assert_close(change, alone, rtol=1e-6, atol=1e-10)
        # ... so its norm is bounded by the clip norm, and here the bound is attained.
        assert change.norm() <= CLIP * (1 + 1e-6)
        assert change.norm() > 0.99 * CLIP


def _private(model, mode: str, batch: int):
    """`make_private` as client/dp_training.py calls it (σ = 0: only the clipping remains)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.zeros(batch)), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
            data_loader=loader, noise_multiplier=0.0, max_grad_norm=CLIP,
            poisson_sampling=False, grad_sample_mode=mode)
    return private[0], private[1]


def _ghost_clipped_sum(optimizer, model, rows, inputs) -> torch.Tensor:
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    corrupted, mask, positions, labels = (t[rows] for t in inputs)
    optimizer.zero_grad(set_to_none=True)
    per_record = per_sequence_loss(model(corrupted, mask, positions), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPTensorFastGradientClipping(model, optimizer, per_record, "mean").backward()
    return torch.cat([p.grad.flatten() for p in optimizer.params])


def test_ghost_clipping_gives_the_same_clipped_sum_as_hooks(tiny_mlm, icd_batch, tokenizer):
    """The client's mlm mode (ghost) clips exactly like hooks, whose bound is proven above."""
    inputs = _masked(icd_batch, tokenizer.get_vocab_size())
    batch = len(inputs[0])
    everyone = list(range(batch))
    hooks_model, hooks_opt = _private(copy.deepcopy(tiny_mlm), "hooks", batch)
    ghost_model, ghost_opt = _private(copy.deepcopy(tiny_mlm), "ghost", batch)
    reference = _clipped_sum(hooks_opt, hooks_model, everyone, inputs)
    ghost = _ghost_clipped_sum(ghost_opt, ghost_model, everyone, inputs)
    torch.testing.assert_close(ghost, reference, rtol=1e-6, atol=1e-10)
    for removed in (0, batch - 1):  # and one record still moves it by exactly its own share
        rest = [r for r in everyone if r != removed]
        change = ghost - _ghost_clipped_sum(ghost_opt, ghost_model, rest, inputs)
        alone = _ghost_clipped_sum(ghost_opt, ghost_model, [removed], inputs)
        torch.testing.assert_close(change, alone, rtol=1e-6, atol=1e-10)
        assert 0.99 * CLIP < change.norm() <= CLIP * (1 + 1e-6)
