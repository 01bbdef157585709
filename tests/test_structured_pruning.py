"""Structured pruning (whole heads and FFN neurons) of the mean-pooled BERT classifier.

Tiny models built from configs, eager and sdpa attention; inputs carry padding, so a pruned
head that mishandled the attention mask would show.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import BertConfig

from server.compression.onnx_export import export_onnx, onnx_logits, onnx_session
from server.compression.structured_pruning import (
    PruningPlan,
    apply_pruning,
    importance_scores,
    load_pruned,
    plan_file,
    plan_pruning,
    save_pruned,
)
from server.evaluation.text_classifier import MeanPoolClassifier

LAYERS, HIDDEN, HEADS, INTERMEDIATE = 2, 32, 4, 64
HEAD_SIZE = HIDDEN // HEADS
IMPLEMENTATIONS = ["eager", "sdpa"]


def tiny_config(attention: str = "sdpa", dropout: float = 0.0) -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                      max_position_embeddings=32, num_labels=3, attn_implementation=attention,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def tiny_model(attention: str = "sdpa", seed: int = 0, dropout: float = 0.0) -> MeanPoolClassifier:
    torch.manual_seed(seed)
    model = MeanPoolClassifier(tiny_config(attention, dropout)).eval()
    assert model.config._attn_implementation == attention
    return model


def padded_inputs(seed: int = 1, batch: int = 4, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask whose rows have 10, 7, 4 and 10 real tokens (padding at the end)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, real in enumerate([length, 7, 4, length][:batch]):
        mask[row, real:] = 0
        ids[row, real:] = 0
    return ids, mask


def logits(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs[0], attention_mask=inputs[1]).logits


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# A hand-made plan: layer 0 keeps heads 1, 3 and 40 neurons, layer 1 keeps head 2 and 17.
PLAN = PruningPlan(kept_heads=((1, 3), (2,)),
                   kept_neurons=(tuple(range(0, 64, 2))[:20] + tuple(range(41, 61)),
                                 tuple(range(5, 22))))


def masked_reference(model: MeanPoolClassifier, plan: PruningPlan) -> list:
    """Hooks on the unpruned model zeroing the removed heads' context and neurons' activation."""
    handles = []
    for layer, heads, neurons in zip(model.bert.encoder.layer, plan.kept_heads,
                                     plan.kept_neurons):
        head_keep = torch.zeros(HEADS)
        head_keep[list(heads)] = 1
        neuron_keep = torch.zeros(INTERMEDIATE)
        neuron_keep[list(neurons)] = 1
        head_keep = head_keep.repeat_interleave(HEAD_SIZE)
        handles.append(layer.attention.output.dense.register_forward_pre_hook(
            lambda _m, args, keep=head_keep: (args[0] * keep,)))
        handles.append(layer.output.dense.register_forward_pre_hook(
            lambda _m, args, keep=neuron_keep: (args[0] * keep,)))
    return handles


@pytest.mark.parametrize("attention", IMPLEMENTATIONS)
def test_ratio_zero_changes_nothing(attention):
    model = tiny_model(attention)
    inputs = padded_inputs()
    before, params = logits(model, inputs), count(model)
    plan = plan_pruning(torch.rand(LAYERS, HEADS), torch.rand(LAYERS, INTERMEDIATE), 0.0)
    assert plan.kept_heads == (tuple(range(HEADS)),) * LAYERS
    assert plan.kept_neurons == (tuple(range(INTERMEDIATE)),) * LAYERS
    apply_pruning(model, plan)
    assert count(model) == params
    assert torch.equal(logits(model, inputs), before)


@pytest.mark.parametrize("attention", IMPLEMENTATIONS)
def test_pruned_model_equals_masked_unpruned_model_on_padded_inputs(attention):
    reference = tiny_model(attention)
    pruned = apply_pruning(copy.deepcopy(reference), PLAN)
    inputs = padded_inputs()
    unmasked = logits(reference, inputs)
    handles = masked_reference(reference, PLAN)
    expected = logits(reference, inputs)
    for handle in handles:
        handle.remove()
    got = logits(pruned, inputs)
    assert not torch.allclose(expected, unmasked, atol=1e-3)  # the plan does change the model
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    attention_module = pruned.bert.encoder.layer[1].attention.self
    assert attention_module.num_attention_heads == 1
    assert attention_module.all_head_size == HEAD_SIZE
    assert attention_module.query.weight.shape == (HEAD_SIZE, HIDDEN)


def test_parameter_count_and_file_shrink_by_the_expected_amount(tmp_path):
    model = tiny_model()
    full = count(model)
    save_pruned(model, PruningPlan(((0, 1, 2, 3),) * 2, (tuple(range(64)),) * 2),
                tmp_path / "full.safetensors")
    apply_pruning(model, PLAN)
    # Layer 0 drops 2 heads (16 dims) and 24 neurons; layer 1 drops 3 heads (24) and 47.
    per_dim = 3 * (HIDDEN + 1) + HIDDEN
    per_neuron = (HIDDEN + 1) + HIDDEN
    expected = (16 + 24) * per_dim + (24 + 47) * per_neuron
    assert full - count(model) == expected
    save_pruned(model, PLAN, tmp_path / "pruned.safetensors")
    saved_bytes = (tmp_path / "full.safetensors").stat().st_size
    pruned_bytes = (tmp_path / "pruned.safetensors").stat().st_size
    assert saved_bytes - pruned_bytes >= 4 * expected  # float32: at least the removed tensors


@pytest.mark.parametrize("attention", IMPLEMENTATIONS)
def test_save_load_round_trip(tmp_path, attention):
    model = apply_pruning(tiny_model(attention), PLAN)
    target = tmp_path / "model.safetensors"
    save_pruned(model, PLAN, target)
    assert plan_file(target) == tmp_path / "model.pruning.json"
    assert PruningPlan.from_json(json.loads(plan_file(target).read_text())) == PLAN
    loaded = load_pruned(tiny_config(attention), target)
    assert not loaded.training
    inputs = padded_inputs()
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    # A plan that does not match the saved weights cannot be loaded silently.
    other = PruningPlan(kept_heads=((0,), (2,)), kept_neurons=PLAN.kept_neurons)
    plan_file(target).write_text(json.dumps(other.to_json()))
    with pytest.raises(RuntimeError):
        load_pruned(tiny_config(attention), target)


def test_save_refuses_a_model_the_plan_does_not_describe(tmp_path):
    with pytest.raises(ValueError, match="apply the plan"):
        save_pruned(tiny_model(), PLAN, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("plan, message", [
    (PruningPlan(((0,),) * 3, ((0,),) * 3), "3 layers"),
    (PruningPlan(((0, 4), (1,)), ((0,), (1,))), "only 4 heads"),
    (PruningPlan(((0,), (1,)), ((0,), (64,))), "only 64 FFN neurons"),
])
def test_apply_refuses_a_plan_that_does_not_fit(plan, message):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        apply_pruning(model, plan)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_apply_refuses_an_already_pruned_model():
    model = apply_pruning(tiny_model(), PLAN)
    with pytest.raises(ValueError, match="already pruned"):
        apply_pruning(model, PruningPlan(((0,), (0,)), ((0,), (0,))))


@pytest.mark.parametrize("data, message", [
    ([], "JSON object"),
    ({"kept_heads": [[0]], "kept_neurons": [[0]]}, "format"),
    ({**PLAN.to_json(), "extra": 1}, "unexpected"),
    ({**PLAN.to_json(), "kept_heads": [[0]]}, "has 2"),
    ({**PLAN.to_json(), "kept_heads": [[0], []]}, "at least one"),
    ({**PLAN.to_json(), "kept_heads": [[1, 0], [0]]}, "strictly increasing"),
    ({**PLAN.to_json(), "kept_heads": [[0, 0], [0]]}, "strictly increasing"),
    ({**PLAN.to_json(), "kept_heads": [[True], [0]]}, "integers"),
    ({**PLAN.to_json(), "kept_heads": [[-1], [0]]}, "integers"),
    ({**PLAN.to_json(), "kept_neurons": "all"}, "non-empty list"),
])
def test_plan_json_is_validated(data, message):
    with pytest.raises(ValueError, match=message):
        PruningPlan.from_json(data)


def test_plan_pruning_is_uniform_keeps_one_and_checks_ratio():
    heads = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.0, 0.9, 0.8, 0.7]])
    neurons = torch.arange(2 * 8, dtype=torch.float).reshape(2, 8).flip(1)
    plan = plan_pruning(heads, neurons, 0.5)
    assert plan.kept_heads == ((0, 2), (1, 2))
    assert plan.kept_neurons == ((0, 1, 2, 3), (0, 1, 2, 3))
    assert plan_pruning(heads, neurons, 0.99).kept_heads == ((0,), (1,))
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            plan_pruning(heads, neurons, bad)


def ce_batches() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    batches = [padded_inputs(seed) for seed in (1, 2, 3)]
    labels = [torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 1]), torch.tensor([1, 0, 0, 2])]
    return batches, labels


@pytest.mark.parametrize("attention", IMPLEMENTATIONS)
def test_importance_ranks_dead_heads_and_neurons_lowest_and_leaves_model_unchanged(attention):
    model = tiny_model(attention, dropout=0.1).train()
    dead_heads = [1, 3]  # per layer
    dead_neurons = [list(range(0, 32, 2)), list(range(40, 56))]  # 16 = 0.25 * 64 per layer
    with torch.no_grad():
        for layer, head, neurons in zip(model.bert.encoder.layer, dead_heads, dead_neurons):
            layer.attention.output.dense.weight[:, head * HEAD_SIZE:(head + 1) * HEAD_SIZE] = 0
            layer.output.dense.weight[:, neurons] = 0
    model.bert.embeddings.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    batches, labels = ce_batches()

    def loss_fn(logits: torch.Tensor, index: int) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels[index])

    head_scores, neuron_scores = importance_scores(model, batches, loss_fn)
    assert head_scores.shape == (LAYERS, HEADS)
    assert neuron_scores.shape == (LAYERS, INTERMEDIATE)
    for number in range(LAYERS):
        assert head_scores[number, dead_heads[number]] == 0
        assert (head_scores[number] > 0).sum() == HEADS - 1
        torch.testing.assert_close(head_scores[number].norm(), torch.tensor(1.0))
        assert torch.all(neuron_scores[number, dead_neurons[number]] == 0)
        assert (neuron_scores[number] > 0).sum() == INTERMEDIATE - 16
    plan = plan_pruning(head_scores, neuron_scores, 0.25)
    for number in range(LAYERS):
        assert dead_heads[number] not in plan.kept_heads[number]
        assert set(plan.kept_neurons[number]).isdisjoint(dead_neurons[number])
    # Eval mode while scoring (dropout off): a second pass gives the same scores.
    again = importance_scores(model, batches, loss_fn)
    assert torch.equal(again[0], head_scores) and torch.equal(again[1], neuron_scores)
    # The model is as it was: weights, requires_grad, no .grad, training flag, no hooks.
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_pruning_keeps_requires_grad_and_the_global_rng():
    model = tiny_model()
    model.bert.encoder.layer[0].requires_grad_(False)
    torch.manual_seed(5)
    apply_pruning(model, PLAN)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    layer0, layer1 = model.bert.encoder.layer
    assert not any(p.requires_grad for p in layer0.parameters())
    assert all(p.requires_grad for p in layer1.parameters())


def test_onnx_export_of_pruned_model_matches_torch(tmp_path):
    model = apply_pruning(tiny_model(), PLAN)
    path = export_onnx(model, padded_inputs(), tmp_path / "pruned.onnx")
    session = onnx_session(path, threads=1)
    # Other batch and sequence sizes than the traced example: the axes stay dynamic.
    for inputs in (padded_inputs(), padded_inputs(seed=7, batch=3, length=13)):
        got = onnx_logits(session, inputs[0].numpy(), inputs[1].numpy())
        assert abs(got - logits(model, inputs).numpy()).max() <= 1e-4
