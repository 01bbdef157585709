"""`finetune-top`: partial freezing trains the upper encoder and the head and leaves exactly the
lower half of the encoder (text: embeddings + lower layers; images: first conv blocks) as it
started, for a pretrained and a scratch encoder alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.run_config import ModelShape
from common.tasks.mae import build_image_classifier, lower_encoder_layers
from common.tasks.mlm import bert_config
from server.evaluation.classifier_training import FinetuneRecipe, freeze, train_classifier
from server.evaluation.text_classifier import build_classifier
from server.evaluation.text_classifier import lower_encoder_layers as lower_text_layers


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _frozen_and_trained(model: nn.Module, lower: list[nn.Module],
                        inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
                        ) -> tuple[set[str], set[str]]:
    """Parameter names unchanged and changed by a short fine-tune with `lower` frozen."""
    lower_ids = {id(p) for m in lower for p in m.parameters()}
    assert freeze(lower) == sum(p.numel() for m in lower for p in m.parameters()) > 0
    before = _snapshot(model)
    train_classifier(model, inputs, labels, FinetuneRecipe(epochs=3, batch_size=8))
    unchanged = {n for n, p in model.named_parameters() if torch.equal(p, before[n])}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if id(p) in lower_ids}
    assert unchanged == frozen  # nothing frozen moved, everything else trained
    return frozen, changed


@pytest.mark.parametrize("pretrained", [False, True])
def test_images_freeze_the_first_half_of_the_conv_blocks(pretrained: bool):
    weights = None
    if pretrained:
        weights = {k: v + 0.01 for k, v in
                   build_image_classifier(10, None, seed=1).encoder.state_dict().items()}
    model = build_image_classifier(10, weights, seed=0)
    model.num_labels = 10
    lower = lower_encoder_layers(model)
    convs = [m for m in model.encoder.layers if isinstance(m, nn.Conv2d)]
    assert [m for m in lower if isinstance(m, nn.Conv2d)] == convs[: len(convs) // 2]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=generator)
    frozen, changed = _frozen_and_trained(model, lower, (images,),
                                          torch.arange(16) % 10)
    assert {n.split(".")[0] for n in changed} == {"encoder", "head"}
    assert all(n.startswith("encoder.layers.") for n in frozen)


def test_text_freezes_the_embeddings_and_the_lower_layers():
    shape = ModelShape(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                       max_length=16)
    model = build_classifier(bert_config(shape, vocab_size=50, num_labels=3), None, seed=0)
    lower = lower_text_layers(model)
    assert lower == [model.bert.embeddings, *model.bert.encoder.layer[:2]]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (16, 16), generator=generator)
    frozen, changed = _frozen_and_trained(model, lower, (ids, torch.ones_like(ids)),
                                          torch.arange(16) % 3)
    assert any(n.startswith("bert.encoder.layer.3.") for n in changed)
    assert any(n.startswith("classifier.") for n in changed)
    assert any(n.startswith("bert.embeddings.") for n in frozen)
    assert not any(n.startswith("bert.encoder.layer.2.") for n in frozen)
