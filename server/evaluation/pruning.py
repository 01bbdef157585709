"""Global magnitude pruning of every `nn.Linear` weight (encoder and classification head).

Usage: `prune_linear_weights` -> short recovery fine-tune with the masks in place ->
`make_pruning_permanent` -> evaluate. While pruned, each Linear holds `weight_orig` (trained)
and `weight_mask` (fixed); a forward pre-hook recomputes `weight = weight_orig * weight_mask`,
so pruned entries stay zero throughout recovery training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def prune_linear_weights(model: nn.Module, amount: float) -> None:
    """Zero the `amount` fraction of smallest-magnitude Linear weights, ranked across all layers.

    Global ranking (rather than per layer) lets layers with many small weights lose more.
    Biases, embeddings and LayerNorm are not pruned. Applying it again to an already pruned
    model prunes `amount` of the remaining weights (torch's PruningContainer semantics).
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    linears = _linears(model)
    if not linears:
        raise ValueError("model has no nn.Linear layers to prune")
    prune.global_unstructured(
        [(m, "weight") for m in linears],
        pruning_method=prune.L1Unstructured,
        amount=amount,
    )


def make_pruning_permanent(model: nn.Module) -> None:
    """Fold each mask into its weight and drop `weight_orig`/`weight_mask` and the hooks."""
    for module in _linears(model):
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries across all Linear weights (masks applied if present)."""
    zeros = 0
    total = 0
    with torch.no_grad():
        for module in _linears(model):
            if hasattr(module, "weight_mask"):
                # Compute from orig*mask: `module.weight` is only refreshed on the next forward.
                weight = module.weight_orig * module.weight_mask
            else:
                weight = module.weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0
