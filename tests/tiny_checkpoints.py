"""A tiny random BERT checkpoint folder, built on the fly (tests never need the 83 MB package),
and the two per-record proofs every adapter objective must pass."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel

WORDS = ["the", "patient", "has", "a", "fracture", "of", "left", "arm", "##s"]


def tiny_bert_folder(folder: Path, specials: tuple[str, ...] = (
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_type: str = "bert") -> Path:
    """A random 2-layer BERT saved the way Hugging Face saves a checkpoint."""
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    if model_type != "bert":
        meta = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**meta, "model_type": model_type}))
    return folder


def adapted_tiny_encoder(folder: Path, adapter: str = "lora") -> torch.nn.Module:
    """The tiny checkpoint with rank-2 adapters, B made non-zero (at init B = 0 gives A no
    gradient to check) and dropout off (batched and one-at-a-time passes then agree exactly)."""
    from common.tasks.public_encoder import add_adapters

    encoder = add_adapters(BertModel.from_pretrained(str(folder), add_pooling_layer=False),
                           rank=2, alpha=4, adapter=adapter, seed=1)
    torch.manual_seed(1)
    for name, parameter in encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return encoder


Loss = Callable[[torch.nn.Module, list[int]], torch.Tensor]  # (model, rows) -> mean loss


def assert_per_sample_gradients_equal_brute_force(model: torch.nn.Module, loss: Loss,
                                                  batch: int) -> None:
    """Opacus hooks' per-sample gradients of every trainable parameter equal one-record
    backward passes, and the frozen parameters get none."""
    from opacus import GradSampleModule

    reference = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        loss(gsm, list(range(batch))).backward()
    assert all(getattr(p, "grad_sample", None) is None
               for p in gsm.parameters() if not p.requires_grad)
    per_sample = {n: p.grad_sample.detach().clone()
                  for n, p in gsm.named_parameters() if p.requires_grad}
    reference_params = [p for p in reference.parameters() if p.requires_grad]
    for row in range(batch):
        reference.zero_grad(set_to_none=True)
        loss(reference, [row]).backward()
        for (name, got), expected in zip(per_sample.items(), reference_params, strict=True):
            torch.testing.assert_close(got[row], expected.grad, rtol=1e-6, atol=1e-9, msg=name)


def assert_one_record_moves_the_clipped_sum_by_its_own_share(
        model: torch.nn.Module, loss: Loss, batch: int, clip: float) -> None:
    """Removing any one record changes the clipped gradient sum by exactly that record's own
    clipped gradient: its norm is at most `clip` (and attains it when every record clips)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD([p for p in gsm.parameters() if p.requires_grad],
                                            lr=0.0),
                            noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=batch)

    def clipped_sum(rows: list[int]) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss(gsm, rows).backward()
        optimizer.clip_and_accumulate()
        return torch.cat([p.summed_grad.flatten() for p in optimizer.params])

    everyone = list(range(batch))
    full = clipped_sum(everyone)
    for removed in everyone:
        change = full - clipped_sum([r for r in everyone if r != removed])
        torch.testing.assert_close(change, clipped_sum([removed]), rtol=1e-6, atol=1e-10)
        assert 0.99 * clip < change.norm() <= clip * (1 + 1e-6)
