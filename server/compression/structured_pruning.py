"""Structured pruning of the mean-pooled BERT classifier: whole attention heads and FFN neurons.

Unlike magnitude pruning (server/evaluation/pruning.py), which zeroes single weights and keeps
the shapes, this physically removes rows/columns, so the weights file and the latency shrink.

Usage: `importance_scores` (Michel et al., 2019: |d loss / d mask| of a multiplicative mask on
each head's context output and each FFN neuron's activation) -> `plan_pruning` (the same
fraction removed in every layer) -> `apply_pruning` -> optional recovery fine-tune ->
`save_pruned`. BertConfig cannot express a per-layer head count (it derives the head size
from hidden_size / num_attention_heads), so the plan is saved next to the weights as JSON and
`load_pruned` rebuilds the unpruned architecture from the config and prunes it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig
from transformers.pytorch_utils import prune_linear_layer

from server.atomic_json import write_json
from server.evaluation.safetensors_export import load_state, save_state
from server.evaluation.text_classifier import MeanPoolClassifier

PLAN_FORMAT = "fedssl-structured-pruning/1"


def _index_lists(name: str, value: Any) -> tuple[tuple[int, ...], ...]:
    """Validate one per-layer list of kept indices: non-empty, ints >= 0, strictly increasing."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"pruning plan: {name} must be a non-empty list (one entry per layer)")
    layers = []
    for number, kept in enumerate(value):
        if not isinstance(kept, (list, tuple)) or not kept:
            raise ValueError(f"pruning plan: {name}[{number}] must be a non-empty list "
                             "(every layer keeps at least one)")
        # bool is an int subclass; a stray true/false in the JSON is a bug, not index 1/0.
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in kept):
            raise ValueError(f"pruning plan: {name}[{number}] must hold integers >= 0, "
                             f"got {list(kept)}")
        if any(a >= b for a, b in pairwise(kept)):
            raise ValueError(f"pruning plan: {name}[{number}] must be strictly increasing "
                             f"(sorted, no repeats), got {list(kept)}")
        layers.append(tuple(kept))
    return tuple(layers)


@dataclass(frozen=True)
class PruningPlan:
    """Which heads and FFN neurons each layer keeps (original numbering); JSON round-trip.

    Construction validates: one entry per layer in both fields, each a non-empty strictly
    increasing tuple of indices >= 0 (ValueError otherwise). Whether the indices fit a given
    model is checked by `apply_pruning`.
    """

    kept_heads: tuple[tuple[int, ...], ...]
    kept_neurons: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        heads = _index_lists("kept_heads", self.kept_heads)
        neurons = _index_lists("kept_neurons", self.kept_neurons)
        if len(heads) != len(neurons):
            raise ValueError(f"pruning plan: kept_heads has {len(heads)} layers but "
                             f"kept_neurons has {len(neurons)}")
        # Normalise lists to tuples so equality and hashing work after from_json.
        object.__setattr__(self, "kept_heads", heads)
        object.__setattr__(self, "kept_neurons", neurons)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_json` reads it back)."""
        return {"format": PLAN_FORMAT, "kept_heads": [list(k) for k in self.kept_heads],
                "kept_neurons": [list(k) for k in self.kept_neurons]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruningPlan:
        """Read `to_json`'s dict; ValueError naming the problem if it is not a valid plan."""
        if not isinstance(data, dict):  # ValueError: one error type for any bad plan file
            raise ValueError(  # noqa: TRY004
                f"pruning plan must be a JSON object, got {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"pruning plan: format must be {PLAN_FORMAT!r}, "
                             f"got {data.get('format')!r}")
        expected = {"format", "kept_heads", "kept_neurons"}
        if set(data) != expected:
            raise ValueError(f"pruning plan: keys must be {sorted(expected)}, "
                             f"missing {sorted(expected - set(data))}, "
                             f"unexpected {sorted(set(data) - expected)}")
        return cls(kept_heads=data["kept_heads"], kept_neurons=data["kept_neurons"])


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.bert.encoder.layer  # type: ignore[no-any-return]


def _head_size(model: nn.Module) -> int:
    return int(_layers(model)[0].attention.self.attention_head_size)


def importance_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, int], Tensor],
) -> tuple[Tensor, Tensor]:
    """Head scores `[L, H]` and FFN-neuron scores `[L, I]` (Michel et al., 2019).

    A multiplicative mask of ones sits on each head's context output (the input of
    `attention.output.dense`) and on each FFN neuron's activation (the input of
    `output.dense`); the score is |d loss / d mask| summed over `batches` of
    `(input_ids, attention_mask)`, where `loss_fn(logits, batch_index)` gives the scalar loss
    (the caller decides: cross-entropy on labels, KL to a teacher, ...). Head scores are
    L2-normalised per layer, as Michel et al. do. Scoring runs in eval mode (no dropout) with
    `torch.autograd.grad`, so parameters' `.grad` stay as they were; hooks are removed and
    the model's training flag restored afterwards. Every layer must have the same head and
    neuron count (an unpruned or uniformly pruned model); indices are the model's current ones.
    """
    layers = _layers(model)
    head_size = _head_size(model)
    heads = {layer.attention.output.dense.in_features // head_size for layer in layers}
    neurons = {layer.output.dense.in_features for layer in layers}
    if len(heads) != 1 or len(neurons) != 1:
        raise ValueError("importance_scores needs the same head and neuron count in every layer, "
                         f"got heads {sorted(heads)}, neurons {sorted(neurons)}")
    device = next(model.parameters()).device
    head_mask = torch.ones(len(layers), heads.pop(), device=device, requires_grad=True)
    neuron_mask = torch.ones(len(layers), neurons.pop(), device=device, requires_grad=True)
    head_scores = torch.zeros(head_mask.shape, device=device)
    neuron_scores = torch.zeros(neuron_mask.shape, device=device)

    def mask_heads(number: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor]]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
            context = args[0]
            split = context.unflatten(-1, (head_mask.shape[1], head_size))
            return ((split * head_mask[number].unsqueeze(-1).to(context.dtype)).flatten(-2),)
        return hook

    def mask_neurons(number: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor]]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
            return (args[0] * neuron_mask[number].to(args[0].dtype),)
        return hook

    handles = []
    was_training = model.training
    try:
        for number, layer in enumerate(layers):
            handles.append(layer.attention.output.dense.register_forward_pre_hook(
                mask_heads(number)))
            handles.append(layer.output.dense.register_forward_pre_hook(mask_neurons(number)))
        model.eval()
        for index, (input_ids, attention_mask) in enumerate(batches):
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=attention_mask.to(device)).logits
            head_grad, neuron_grad = torch.autograd.grad(loss_fn(logits, index),
                                                         [head_mask, neuron_mask])
            # Absolute value per batch, then summed: Michel et al.'s estimator.
            head_scores += head_grad.abs()
            neuron_scores += neuron_grad.abs()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # The epsilon keeps a layer whose heads all score 0 at 0 instead of NaN.
    norms = head_scores.norm(p=2, dim=1, keepdim=True)
    return head_scores / (norms + 1e-20), neuron_scores


def _lowest_kept(scores: Tensor, ratio: float) -> tuple[tuple[int, ...], ...]:
    """Per row, the indices left after dropping round(ratio * n) lowest scores (keep >= 1)."""
    count = scores.shape[1]
    remove = min(round(ratio * count), count - 1)
    # Stable sort: among equal scores the lower index goes first, so plans are reproducible.
    order = torch.argsort(scores, dim=1, stable=True)
    return tuple(tuple(sorted(int(i) for i in row[remove:])) for row in order)


def plan_pruning(head_scores: Tensor, neuron_scores: Tensor, ratio: float) -> PruningPlan:
    """Remove round(ratio * H) lowest-scoring heads and round(ratio * I) lowest-scoring
    neurons in every layer (uniform; at least one of each kept). `ratio` in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be a number in [0, 1), got {ratio!r}")
    if head_scores.dim() != 2 or neuron_scores.dim() != 2:
        raise ValueError("scores must be [layers, heads] and [layers, neurons], got shapes "
                         f"{tuple(head_scores.shape)} and {tuple(neuron_scores.shape)}")
    if head_scores.shape[0] != neuron_scores.shape[0]:
        raise ValueError(f"head scores cover {head_scores.shape[0]} layers, "
                         f"neuron scores {neuron_scores.shape[0]}")
    if head_scores.isnan().any() or neuron_scores.isnan().any():
        raise ValueError("importance scores contain NaN")
    return PruningPlan(kept_heads=_lowest_kept(head_scores.detach().cpu(), ratio),
                       kept_neurons=_lowest_kept(neuron_scores.detach().cpu(), ratio))


def _check_fits(model: nn.Module, plan: PruningPlan) -> None:
    """ValueError unless `model` is unpruned and every index of `plan` exists in it."""
    config = model.config
    layers = _layers(model)
    if len(plan.kept_heads) != len(layers):
        raise ValueError(f"pruning plan has {len(plan.kept_heads)} layers, "
                         f"the model {len(layers)}")
    head_size = _head_size(model)
    for number, layer in enumerate(layers):
        heads = layer.attention.output.dense.in_features // head_size
        neurons = layer.output.dense.in_features
        if heads != config.num_attention_heads or neurons != config.intermediate_size:
            raise ValueError(f"layer {number} is already pruned ({heads} heads, {neurons} "
                             "neurons); a plan applies to the unpruned model only")
        if plan.kept_heads[number][-1] >= heads:
            raise ValueError(f"pruning plan keeps head {plan.kept_heads[number][-1]} in layer "
                             f"{number}, which has only {heads} heads")
        if plan.kept_neurons[number][-1] >= neurons:
            raise ValueError(f"pruning plan keeps neuron {plan.kept_neurons[number][-1]} in "
                             f"layer {number}, which has only {neurons} FFN neurons")


def _pruned(layer: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """`prune_linear_layer`, keeping the layer's dtype, requires_grad and the global RNG."""
    # The new nn.Linear's random init would advance the caller's RNG; fork it.
    with torch.random.fork_rng(devices=[]):
        new = prune_linear_layer(layer, index, dim=dim)
    new = new.to(dtype=layer.weight.dtype)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new.train(layer.training)


def apply_pruning(model: MeanPoolClassifier, plan: PruningPlan) -> MeanPoolClassifier:
    """Prune `model` in place to `plan` and return it.

    Per layer: query/key/value lose the removed heads' output rows and attention.output.dense
    the matching input columns; intermediate.dense loses the removed neurons' rows and
    output.dense the matching columns. The self-attention module's `num_attention_heads` and
    `all_head_size` are updated; its forward only reads `attention_head_size` (unchanged, as is
    `scaling`) and infers the head count from the projection's width, for eager and sdpa alike.
    ValueError (model untouched) if the plan does not fit: wrong layer count, an index out of
    range, or a model that is already pruned. A layer that keeps everything is left as is.
    """
    _check_fits(model, plan)
    head_size = _head_size(model)
    for layer, heads, neurons in zip(_layers(model), plan.kept_heads, plan.kept_neurons):
        attention = layer.attention.self
        if len(heads) < attention.num_attention_heads:
            index = torch.tensor([h * head_size + k for h in heads for k in range(head_size)])
            attention.query = _pruned(attention.query, index, 0)
            attention.key = _pruned(attention.key, index, 0)
            attention.value = _pruned(attention.value, index, 0)
            layer.attention.output.dense = _pruned(layer.attention.output.dense, index, 1)
            attention.num_attention_heads = len(heads)
            attention.all_head_size = len(heads) * head_size
        if len(neurons) < layer.output.dense.in_features:
            index = torch.tensor(neurons)
            layer.intermediate.dense = _pruned(layer.intermediate.dense, index, 0)
            layer.output.dense = _pruned(layer.output.dense, index, 1)
    return model


def plan_file(weights_file: Path) -> Path:
    """Where `save_pruned` puts the plan: `model.safetensors` -> `model.pruning.json`."""
    return Path(weights_file).with_suffix(".pruning.json")


def save_pruned(model: MeanPoolClassifier, plan: PruningPlan, weights_file: Path) -> None:
    """Write the pruned weights (safetensors) and the plan (`plan_file`), each atomically.

    ValueError if the model's layer sizes are not the plan's (saving a pair that
    `load_pruned` could not read back).
    """
    layers = _layers(model)
    head_size = _head_size(model)
    sizes = [(layer.attention.output.dense.in_features // head_size,
              layer.output.dense.in_features) for layer in layers]
    planned = [(len(h), len(n)) for h, n in zip(plan.kept_heads, plan.kept_neurons)]
    if sizes != planned:
        raise ValueError(f"model's (heads, neurons) per layer {sizes} are not the plan's "
                         f"{planned}: apply the plan before saving")
    weights_file = Path(weights_file)
    save_state(model, weights_file)
    write_json(plan_file(weights_file), plan.to_json())


def load_pruned(bert_config: BertConfig, weights_file: Path) -> MeanPoolClassifier:
    """The pruned classifier saved by `save_pruned`, in eval mode.

    Builds the unpruned `MeanPoolClassifier` from `bert_config`, applies the sibling plan
    (ValueError if it is invalid or does not fit the config) and loads the weights strictly
    (torch's RuntimeError on a missing, unexpected or mis-shaped tensor).
    """
    weights_file = Path(weights_file)
    source = plan_file(weights_file)
    if not source.is_file():
        raise FileNotFoundError(f"pruning plan not found next to the weights: {source}")
    plan = PruningPlan.from_json(json.loads(source.read_text()))
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        model = MeanPoolClassifier(bert_config)
    apply_pruning(model, plan)
    model.load_state_dict(load_state(weights_file), strict=True)
    return model.eval()
