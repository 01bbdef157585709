"""Model updates Δ = w_local − w_global: computing, L2-clipping, and applying them."""

from __future__ import annotations

import math

import torch

State = dict[str, torch.Tensor]


def compute_update(local: State, global_: State) -> State:
    """Δ for every tensor of the global state (keys and shapes must match exactly)."""
    if local.keys() != global_.keys():
        raise ValueError(f"state keys differ: {sorted(set(local) ^ set(global_))[:5]}")
    return {k: (local[k].detach().float() - global_[k].float()) for k in global_}


def update_norm(update: State) -> float:
    """Global L2 norm over all tensors of an update."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def clip_update(update: State, max_norm: float) -> tuple[State, float]:
    """Scale `update` so its global L2 norm is at most `max_norm`; also return the raw norm."""
    norm = update_norm(update)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: t * scale for k, t in update.items()}, norm


def clip_to_bound(update: State, max_norm: float) -> State:
    """`update` scaled so that its norm, measured on the stored values, is at most `max_norm`.

    `clip_update` scales in the tensors' own precision, which can leave the norm a float32
    rounding above the bound; an accountant that assumes ≤ S needs exactly ≤ S.
    """
    clipped, _ = clip_update(update, max_norm)
    while update_norm(clipped) > max_norm:
        clipped = {k: t * (1 - 1e-6) for k, t in clipped.items()}
    return clipped


def apply_update(global_: State, update: State) -> State:
    """w_global + Δ, keeping each tensor's dtype."""
    return {k: (v.float() + update[k].float()).to(v.dtype) for k, v in global_.items()}
