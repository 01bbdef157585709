"""Structured-pruned variants: whole heads and feed-forward neurons removed, then repaired.

Per ratio r: score every attention head and FFN neuron of the fp32 model by how much the loss
moves when it is masked (Michel et al. 2019; the loss is cross-entropy against the teacher's
own predicted classes on labeled and public texts, so no label beyond the run's is needed),
remove the lowest r of each in every layer, then recover by distillation from the fp32 model
on the labeled set and the public transfer texts (server/compression/distillation.py). Each
pruned model ships twice: PyTorch fp32 (its weights and pruning plan) and ONNX Runtime int8.
The run's own unstructured magnitude-pruned model (models/pruned.safetensors: zeros in dense
tensors, so no smaller and no faster) is reported beside them for comparison.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from common.run_layout import COMPRESSED_DIR, MODELS_DIR, model_file
from server.compression.compress_progress import throttled
from server.compression.compression_settings import CompressionSettings
from server.compression.distillation import DistillRecipe, distill
from server.compression.finished_run import FinishedRun
from server.compression.onnx_export import onnx_int8_file
from server.compression.structured_pruning import (
    apply_pruning,
    importance_scores,
    plan_pruning,
    save_pruned,
)
from server.compression.teacher_targets import TeacherTargets
from server.compression.variants import VariantSpec, parameter_count
from server.evaluation.classifier_training import FinetuneRecipe

RUN_PRUNED = Path(MODELS_DIR) / model_file("pruned")
IMPORTANCE_BATCH = 32
Say = Callable[[str], None]


def unstructured_spec(run: FinishedRun) -> list[VariantSpec]:
    """The run's own magnitude-pruned model, if it made one (a reported variant only)."""
    if not (run.run_dir / RUN_PRUNED).is_file():
        return []
    amount = run.config.prune_amount
    return [VariantSpec("magnitude", f"PyTorch fp32, {amount:.0%} of Linear weights zeroed "
                        "(the run's unstructured pruning, dense file)", "torch",
                        str(RUN_PRUNED), parameter_count(run.model))]


def recovery_recipe(run: FinishedRun, settings: CompressionSettings) -> DistillRecipe:
    """Repair, not retraining: the run's fine-tuning batch, a fifth of its learning rate
    (as the run's own pruning arm), `recover_epochs` passes."""
    return DistillRecipe(FinetuneRecipe(epochs=settings.recover_epochs,
                                        batch_size=run.config.finetune_batch_size,
                                        learning_rate=run.config.finetune_learning_rate * 0.2,
                                        seed=run.config.seed + 1))


def pruned_specs(run: FinishedRun, targets: TeacherTargets, settings: CompressionSettings,
                 say: Say) -> list[VariantSpec]:
    """Prune, recover, save and export one model per ratio in `settings.prune_ratios`."""
    if not settings.prune_ratios:
        return []
    say(f"[fedssl] compress: scoring heads and FFN neurons on "
        f"{min(settings.importance_records, len(targets.pool()[1])):,} texts")
    heads, neurons = _importance(run, targets, settings.importance_records)
    specs: list[VariantSpec] = []
    for ratio in settings.prune_ratios:
        key = f"heads-ffn-{round(ratio * 100)}"
        plan = plan_pruning(heads, neurons, ratio)
        model = apply_pruning(copy.deepcopy(run.model), plan)
        say(f"[fedssl] compress: {key}: {parameter_count(model):,} parameters left; recovering "
            f"({settings.recover_epochs} epochs of distillation)")
        if settings.recover_epochs > 0:
            distill(model, (targets.data.labeled_inputs, targets.data.labeled_labels),
                    targets.labeled_logits, targets.data.transfer_inputs,
                    targets.transfer_logits, recovery_recipe(run, settings),
                    on_step=throttled(f"{key} recovery", say, "steps"))
        model.eval()
        weights = Path(COMPRESSED_DIR) / f"{key}.safetensors"
        save_pruned(model, plan, run.run_dir / weights)
        onnx = onnx_int8_file(model, run.test_inputs, run.run_dir / COMPRESSED_DIR / f"{key}-int8.onnx")
        share = f"{ratio:.0%} of heads and FFN neurons removed"
        specs += [
            VariantSpec(key, f"PyTorch fp32, {share}, recovered", "torch", str(weights),
                        parameter_count(model), pruned=True),
            VariantSpec(f"{key}-onnx-int8", f"ONNX Runtime int8, {share}", "onnx",
                        str(onnx.relative_to(run.run_dir)), parameter_count(model)),
        ]
    return specs


def _importance(run: FinishedRun, targets: TeacherTargets, records: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Head and neuron scores on the first `records` texts of a seeded shuffle of the pool."""
    (ids, mask), predicted = targets.pool()
    order = torch.randperm(len(predicted),
                           generator=torch.Generator().manual_seed(run.config.seed))[:records]
    chunks = [order[i:i + IMPORTANCE_BATCH] for i in range(0, len(order), IMPORTANCE_BATCH)]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in chunks:
            yield ids[chunk], mask[chunk]

    def loss(logits: torch.Tensor, index: int) -> torch.Tensor:
        return F.cross_entropy(logits, predicted[chunks[index]])

    return importance_scores(run.model, batches(), loss)
