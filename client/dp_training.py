"""Local DP-SGD on a client's records with Opacus.

Plain functions, no Flower: the ClientApp calls `train_locally` once per round. Privacy
parameters are explicit: per-record clip norm C, noise multiplier σ, the Poisson sample rate q
Opacus derives from the loader, and the generator the DP randomness comes from: the public
`seed` fixes masks, augmentations and dropout, while `dp_generator` (secret:
common/privacy/dp_randomness.py) draws the Poisson masks and the Gaussian noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class DpSettings:
    """DP-SGD parameters for one round of local training."""

    noise_multiplier: float
    clip_norm: float
    batch_size: int  # B: Poisson rate q = 1/⌈n/B⌉, so the expected batch is n/⌈n/B⌉ (≤ B)
    local_steps: int
    learning_rate: float
    # Opacus per-sample clipping: "hooks" materialises per-sample gradients; "ghost" computes
    # only their norms, then backpropagates the clipped-weighted loss (same clipped sum, about
    # half the cost for the text model: benchmarks/mlm_step_time.md). Ghost has no Conv2d/
    # GroupNorm support in Opacus 1.6, so each task names its mode (common/tasks/).
    grad_sample_mode: str = "hooks"


@dataclass(frozen=True)
class LocalResult:
    """What one round of local DP training produced (weights stay in the model)."""

    mean_loss: float  # stays on the node unless the simulation switch releases it
    steps: int
    sample_rate: float


def poisson_sample_rate(num_records: int, batch_size: int) -> float:
    """The sample rate Opacus uses for a loader of `num_records` at `batch_size`."""
    return 1.0 / math.ceil(num_records / batch_size)


PerRecordLoss = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]


def train_locally(
    model: nn.Module,
    records: tuple[torch.Tensor, ...],
    per_record_loss: PerRecordLoss,
    settings: DpSettings,
    seed: int,
    dp_generator: torch.Generator,
) -> LocalResult:
    """Run `settings.local_steps` DP-SGD steps of a task's objective on these records.

    `records` are tensors with one row per record; `per_record_loss` returns one loss per
    record (shape `[B]`), which is what makes per-record clipping meaningful. `seed` (public)
    fixes masks, augmentations and dropout; `dp_generator` (secret) draws the Poisson masks
    and the noise.

    Uses Poisson sampling (batches vary in size and may be empty; an empty batch still adds
    noise and counts as a step, as the accountant assumes). `model` is trained in place.
    """
    # Public and reproducible: dropout and anything else on the global RNG. The DP randomness
    # (Poisson masks, noise) comes only from `dp_generator` (tests/test_dp_randomness_source.py).
    torch.manual_seed(seed)
    task_rng = torch.Generator().manual_seed(seed + 1)  # the task's masks / augmentations
    # Opacus's Poisson sampler takes the loader's generator; its noise takes noise_generator.
    loader = DataLoader(TensorDataset(*records), batch_size=settings.batch_size,
                        generator=dp_generator)
    # Only trainable parameters: frozen ones (`freeze-embeddings`) get neither clipping nor noise.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=settings.learning_rate)
    with warnings.catch_warnings():
        # secure_mode needs torchcsprng, which has no wheel for this torch version.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        # Opacus's own accountant is not used: the node's ledger is the one record of spend.
        engine = PrivacyEngine(accountant="rdp")
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.clip_norm,
            poisson_sampling=True,
            grad_sample_mode=settings.grad_sample_mode,
            noise_generator=dp_generator,
        )
    ghost = settings.grad_sample_mode == "ghost"
    # Ghost mode also returns a loss wrapper built for (output, target) criteria; the tasks
    # give per-record losses, which are wrapped directly below instead.
    private_model, optimizer, loader = (private[0], private[1], private[-1])
    private_model.train()
    losses: list[float] = []
    steps = 0
    batches = iter(loader)
    while steps < settings.local_steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        optimizer.zero_grad(set_to_none=True)
        if len(batch[0]) == 0:
            _mark_empty_batch(model, ghost)
        else:
            per_record = per_record_loss(private_model, tuple(batch), task_rng)
            # Ghost: backward runs twice (norms, then the loss re-weighted by each record's
            # clipping factor), leaving the sum of clipped per-record gradients in p.grad.
            loss = DPTensorFastGradientClipping(private_model, optimizer, per_record, "mean") \
                if ghost else per_record.mean()
            with warnings.catch_warnings():
                # Opacus' hooks on the embedding see integer inputs; the warning is harmless.
                warnings.filterwarnings("ignore", message=".*Full backward hook.*")
                loss.backward()
            losses.append(loss.item())
        optimizer.step()  # clip, add noise, step; the accountant hook records the step
        steps += 1
    private_model.remove_hooks()
    return LocalResult(
        mean_loss=sum(losses) / len(losses) if losses else float("nan"),
        steps=steps,
        sample_rate=float(loader.sample_rate),
    )


def _mark_empty_batch(model: torch.nn.Module, ghost: bool) -> None:
    """Make an empty Poisson batch a step of pure noise, as a backward on 0 records would.

    Hooks mode clips per-sample gradients: give it zero of them. Ghost mode reads the clipped
    sum from `p.grad`: make it zero.
    """
    for param in model.parameters():
        if param.requires_grad:
            if ghost:
                param.grad = torch.zeros_like(param)
            else:
                param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype)
