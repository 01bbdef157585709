"""Client updates: clipping on the client, validation and application on the server."""

from __future__ import annotations

import pytest
import torch

from common.model_updates import (
    apply_update,
    clip_to_bound,
    clip_update,
    compute_update,
    update_norm,
)
from server.update_fedavg import update_problem

GLOBAL = {"a": torch.zeros(3, 2), "b": torch.ones(4)}


def _local(scale: float) -> dict[str, torch.Tensor]:
    return {"a": torch.full((3, 2), scale), "b": torch.ones(4) + scale}


def test_clip_scales_to_bound_and_keeps_small_updates():
    update = compute_update(_local(1.0), GLOBAL)
    assert update_norm(update) == pytest.approx(10 ** 0.5)
    clipped, raw = clip_update(update, 1.0)
    assert raw == pytest.approx(10 ** 0.5)
    assert update_norm(clipped) == pytest.approx(1.0)
    small, _ = clip_update(compute_update(_local(0.01), GLOBAL), 1.0)
    torch.testing.assert_close(small["a"], torch.full((3, 2), 0.01))


def _just_above(bound: float, seed: int) -> dict[str, torch.Tensor]:
    """A float32 update whose norm is a hair above `bound` (as after local training)."""
    generator = torch.Generator().manual_seed(seed)
    raw = {"a": torch.randn(1000, generator=generator), "b": torch.randn(7, 3, generator=generator)}
    scale = bound * (1 + 1e-6) / update_norm(raw)
    return {k: v * scale for k, v in raw.items()}  # scaled in float32, like clip_update


def test_clip_to_bound_is_at_most_the_bound_exactly_in_float32():
    cases = [(bound, seed) for bound in (0.1, 1.0, 5.0) for seed in range(5)]
    rounded_above = 0
    for bound, seed in cases:
        update = _just_above(bound, seed)
        assert update_norm(update) > bound
        plain, _ = clip_update(update, bound)
        rounded_above += update_norm(plain) > bound  # float32 scaling can land above S
        clipped = clip_to_bound(update, bound)
        norm = update_norm(clipped)
        assert norm <= bound, (bound, seed, norm)
        assert norm >= bound * (1 - 1e-5)  # clipped to the bound, not far below it
        assert all(clipped[k].dtype == torch.float32 for k in update)
        flat = torch.cat([update[k].double().flatten() for k in ("a", "b")])
        out = torch.cat([clipped[k].double().flatten() for k in ("a", "b")])
        cosine = float(flat @ out / (flat.norm() * out.norm()))
        assert cosine == pytest.approx(1.0, abs=1e-9)  # same direction
    assert rounded_above > 0  # the cases exercise what clip_update alone gets wrong
    small = compute_update(_local(0.01), GLOBAL)
    kept = clip_to_bound(small, 1.0)
    assert all(torch.equal(kept[k], small[k]) for k in small)  # inside the bound: untouched
    zero = {"a": torch.zeros(3, 2), "b": torch.zeros(4)}
    assert update_norm(clip_to_bound(zero, 1.0)) == 0.0


def test_apply_update_adds_delta():
    new = apply_update(GLOBAL, compute_update(_local(0.5), GLOBAL))
    torch.testing.assert_close(new["a"], torch.full((3, 2), 0.5))
    torch.testing.assert_close(new["b"], torch.full((4,), 1.5))


def test_valid_clipped_update_is_accepted():
    clipped, _ = clip_update(compute_update(_local(3.0), GLOBAL), 2.0)
    assert update_problem(clipped, GLOBAL, 2.0) == ""


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"a": torch.zeros(3, 2)}, "keys differ"),
        ({"a": torch.zeros(3, 2), "b": torch.zeros(4), "c": torch.zeros(1)}, "keys differ"),
        ({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, "shape of a"),
        ({"a": torch.zeros(3, 2, dtype=torch.long), "b": torch.zeros(4)}, "dtype"),
        ({"a": torch.tensor([[0.0, float("nan")]] * 3), "b": torch.zeros(4)}, "non-finite"),
        ({"a": torch.tensor([[0.0, float("inf")]] * 3), "b": torch.zeros(4)}, "non-finite"),
        ({"a": torch.full((3, 2), 1.0), "b": torch.zeros(4)}, "exceeds update-clip-norm"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(update, fragment):
    assert fragment in update_problem(update, GLOBAL, 2.0)
