"""`freeze-embeddings`: clients' DP-SGD leaves the vocabulary matrices exactly as sent, and the
per-record bound still holds for everything that is trained (and released)."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from simulation_runs import CONFIG, SIGMA, hospital_node
from torch.utils.data import DataLoader, TensorDataset

from client.local_round import run_client_round
from common.privacy.dp_randomness import secret_generator
from common.privacy.ledger import PrivacyLedger
from common.run_config import ConfigError, RunConfig
from common.tasks import freeze_vocabulary, get_task
from common.tasks.mlm import VOCABULARY_PARAMETERS, mask_tokens, per_sequence_loss

CLIP = 0.05


def test_a_frozen_round_sends_exactly_zero_for_the_vocabulary(tmp_path, icd_batch):
    config = dataclasses.replace(CONFIG, freeze_embeddings=True)
    task = get_task("mlm")
    records = tuple(t.repeat(4, 1) for t in icd_batch)
    node = hospital_node(tmp_path)
    output = run_client_round(
        config=config, task=task, global_state=task.build_model(config).state_dict(),
        records=records, node=node, ledger=PrivacyLedger.open(node.ledger_path, node.node_id),
        run_id="1", server_round=1, seed=1, dp_generator=secret_generator(),
    )
    assert output.update is not None
    for name in VOCABULARY_PARAMETERS:  # no gradient, no noise, no step: Δ is exactly 0
        assert torch.count_nonzero(output.update[name]) == 0, name
    trained = [k for k in output.update if k not in VOCABULARY_PARAMETERS and "LayerNorm" not in k]
    assert all(torch.count_nonzero(output.update[k]) > 0 for k in trained)
    # The spend is the same mechanism as unfrozen: freezing changes what is noised, not ε.
    assert output.entry is not None and output.entry.noise_multiplier == SIGMA


@pytest.mark.parametrize("mode", ["ghost", get_task("mlm").frozen_grad_sample_mode])
def test_removing_one_record_moves_the_frozen_clipped_sum_by_at_most_c(
    tiny_mlm, icd_batch, tokenizer, mode
):
    model = copy.deepcopy(tiny_mlm)
    trainable = freeze_vocabulary(get_task("mlm"), model)
    assert trainable < 0.6 * sum(p.numel() for p in model.parameters())
    ids, mask = icd_batch
    corrupted, positions, labels = mask_tokens(ids, tokenizer.get_vocab_size(),
                                               torch.Generator().manual_seed(3))
    batch = len(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0),
            data_loader=DataLoader(TensorDataset(torch.zeros(batch)), batch_size=batch),
            noise_multiplier=0.0, max_grad_norm=CLIP, poisson_sampling=False,
            grad_sample_mode=mode)[:2]

    def clipped_sum(rows: list[int]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = per_sequence_loss(private(corrupted[rows], mask[rows], positions[rows]),
                                 labels[rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "ghost":  # the backward pass itself clips; p.grad is the clipped sum
                DPTensorFastGradientClipping(private, optimizer, loss, "mean").backward()
                summed = [p.grad for p in optimizer.params]
            else:
                loss.mean().backward()
                optimizer.clip_and_accumulate()
                summed = [p.summed_grad for p in optimizer.params]
        assert all(p.grad is None for n, p in model.named_parameters()
                   if n in VOCABULARY_PARAMETERS)
        return torch.cat([g.flatten() for g in summed])

    everyone = list(range(batch))
    total = clipped_sum(everyone)
    assert total.numel() == trainable
    for removed in (0, batch - 1):
        change = total - clipped_sum([r for r in everyone if r != removed])
        assert 0.99 * CLIP < change.norm() <= CLIP * (1 + 1e-6)


def test_freezing_is_refused_for_a_task_without_a_vocabulary():
    with pytest.raises(ConfigError, match="freeze-embeddings"):
        RunConfig.from_mapping({**RunConfig().to_mapping(), "task": "mae",
                                "freeze-embeddings": "true"})
