"""Client updates: clipping on the client, validation and application on the server."""

from __future__ import annotations

import pytest
import torch

from common.model_updates import apply_update, clip_update, compute_update, update_norm
from server.delta_fedavg import update_problem

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
