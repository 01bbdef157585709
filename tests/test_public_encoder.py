"""A frozen public encoder with LoRA adapters under Opacus: exact per-record clipping.

The same proofs the from-scratch MLM has (tests/test_mlm_privacy.py), for the adapter path:
per-sample gradients of every trainable parameter equal brute force (hooks), the frozen base
gets none, removing one record moves the clipped gradient sum by exactly that record's own
clipped gradient (so by at most C), and ghost clipping clips exactly like hooks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from simulation_runs import (
    adapted_tiny_encoder,
    assert_one_record_moves_the_clipped_sum_by_its_own_share,
    assert_per_sample_gradients_equal_brute_force,
    tiny_bert_folder,
)
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertModel

from common.data.tokenizer import SpecialIds
from common.tasks.mlm import mask_tokens, per_sequence_loss
from common.tasks.public_encoder import (
    PublicMaskedLm,
    merged_encoder_state,
    trainable_names,
)

CLIP = 0.05
BATCH = 6


def _model(folder, adapter: str = "lora") -> PublicMaskedLm:
    torch.manual_seed(1)
    return PublicMaskedLm(adapted_tiny_encoder(folder, adapter), SpecialIds()).double()


@pytest.fixture()
def folder(tmp_path):
    return tiny_bert_folder(tmp_path / "bert")


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 14, (BATCH, 9), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] … [SEP]
    ids[0, 6:] = 0  # one padded record
    mask = (ids != 0).long()
    corrupted, positions, labels = mask_tokens(ids, 14, torch.Generator().manual_seed(3))
    return corrupted, mask, positions, labels


def _loss(model, rows, inputs) -> torch.Tensor:
    corrupted, mask, positions, labels = (t[rows] for t in inputs)
    return per_sequence_loss(model(corrupted, mask, positions), labels).mean()


@pytest.mark.parametrize("adapter", ["lora", "ffa-lora"])
def test_only_adapters_and_the_transform_train(folder, adapter):
    model = _model(folder, adapter)
    names = list(trainable_names(model))
    assert names and all("lora_" in n or n.startswith("transform.") for n in names)
    assert any("lora_A" in n for n in names) == (adapter == "lora")
    assert any("lora_B" in n for n in names)
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.3 * full


def test_per_sample_gradients_equal_brute_force(folder, inputs):
    assert_per_sample_gradients_equal_brute_force(
        _model(folder), lambda model, rows: _loss(model, rows, inputs), BATCH)


@pytest.mark.parametrize("adapter", ["lora", "ffa-lora"])
def test_removing_one_record_moves_clipped_sum_by_at_most_clip_norm(folder, inputs, adapter):
    assert_one_record_moves_the_clipped_sum_by_its_own_share(
        _model(folder, adapter), lambda model, rows: _loss(model, rows, inputs), BATCH, CLIP)


def _clipped_sum(optimizer, model, rows, inputs) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _loss(model, rows, inputs).backward()
    optimizer.clip_and_accumulate()
    return torch.cat([p.summed_grad.flatten() for p in optimizer.params])


def _private(model, mode: str):
    loader = DataLoader(TensorDataset(torch.zeros(BATCH)), batch_size=BATCH)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(trainable, lr=0.0), data_loader=loader,
            noise_multiplier=0.0, max_grad_norm=CLIP, poisson_sampling=False,
            grad_sample_mode=mode)
    return private[0], private[1]


def _ghost_clipped_sum(optimizer, model, rows, inputs) -> torch.Tensor:
    corrupted, mask, positions, labels = (t[rows] for t in inputs)
    optimizer.zero_grad(set_to_none=True)
    per_record = per_sequence_loss(model(corrupted, mask, positions), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPTensorFastGradientClipping(model, optimizer, per_record, "mean").backward()
    return torch.cat([p.grad.flatten() for p in optimizer.params])


def test_ghost_clipping_gives_the_same_clipped_sum_as_hooks(folder, inputs):
    everyone = list(range(BATCH))
    hooks_model, hooks_opt = _private(_model(folder), "hooks")
    ghost_model, ghost_opt = _private(_model(folder), "ghost")
    reference = _clipped_sum(hooks_opt, hooks_model, everyone, inputs)
    ghost = _ghost_clipped_sum(ghost_opt, ghost_model, everyone, inputs)
    torch.testing.assert_close(ghost, reference, rtol=1e-6, atol=1e-10)


def test_merged_adapters_load_into_a_plain_encoder(folder, inputs):
    model = _model(folder).float()
    merged = BertModel.from_pretrained(str(folder), add_pooling_layer=False)
    missing, unexpected = merged.load_state_dict(merged_encoder_state(model.encoder),
                                                 strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    corrupted, mask = inputs[0], inputs[1]
    model.eval()
    merged.eval()
    position = torch.arange(corrupted.shape[1]).expand_as(corrupted)
    kwargs = {"input_ids": corrupted, "attention_mask": mask, "position_ids": position,
              "token_type_ids": torch.zeros_like(corrupted)}
    with torch.no_grad():
        torch.testing.assert_close(merged(**kwargs).last_hidden_state,
                                   model.encoder(**kwargs).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("task_name", "adapter"), [("mlm", "lora"), ("contrastive", "ffa-lora")])
def test_a_client_round_trains_and_sends_only_the_adapters(tmp_path, folder, task_name, adapter):
    """The node's real round (ledger first, DP-SGD, clipped update) on a public encoder:
    the update covers exactly the federated keys — adapters and head, never the frozen
    encoder, and with FFA-LoRA never A."""
    from client.local_round import run_client_round
    from client.node_settings import NodeSettings
    from common.data.tokenizer import encode_texts, load_tokenizer
    from common.privacy.dp_randomness import secret_generator
    from common.privacy.ledger import PrivacyLedger
    from common.run_config import RunConfig
    from common.tasks import federated_state, get_task

    config = RunConfig(task=task_name, init=str(folder), adapter=adapter, lora_rank=2,
                       batch_size=4, local_steps=2, noise_multiplier="1.0", max_length=12)
    config.validate()
    task = get_task(task_name)
    torch.manual_seed(0)
    model = task.build_model(config)
    global_state = federated_state(model)
    assert set(global_state) == set(model.federated_keys)
    assert any("lora_A" in key for key in global_state) == (adapter == "lora")
    texts = ["the patient has a fracture", "left arm fracture", "the arms of the patient",
             "a fracture of the left arm"] * 4
    records = encode_texts(load_tokenizer(str(folder / "tokenizer.json")), texts, 12)
    node = NodeSettings(node_id="h", state_dir=tmp_path / "state", max_epsilon=0.0,
                        delta=1e-5, partition_id=None)
    output = run_client_round(
        config=config, task=task, global_state=global_state, records=records, node=node,
        ledger=PrivacyLedger.open(node.ledger_path, owner="h"), run_id="r", server_round=1,
        seed=1, dp_generator=secret_generator())
    assert output.update is not None and set(output.update) == set(global_state)
    assert any(delta.abs().sum() > 0 for delta in output.update.values())
    spends = PrivacyLedger.open(node.ledger_path, owner="h").spends("h")
    assert len(spends) == 1 and spends[0].noise_multiplier == 1.0  # written, then confirmed
