"""After federated pretraining: every downstream arm on the server's few labels, then prune, save.

The same for every task; a task's `DownstreamKit` (server/evaluation/text_arms.py,
server/evaluation/image_arms.py) supplies its labeled data, classifier and classical baseline.
The arms are those `fedssl sweep` measures per label budget (server/evaluation/arms.py), here
on the run's own labeled set: the pretrained encoder fine-tuned, the identical architecture
trained from scratch with the identical recipe (only the starting weights differ), a classical
baseline, and a linear probe on the frozen encoder next to the same probe on a random-init
encoder (the control without which a probe looks better than it is). The fine-tuned model is
then pruned by global magnitude, briefly recovered, and evaluated again.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from common.run_config import RunConfig
from common.run_layout import MODELS_DIR, model_file
from common.tasks import get_task
from server.evaluation.arm_labels import federated_label
from server.evaluation.arms import evaluate_arm, evaluate_classifier, finetune_recipe
from server.evaluation.classifier_training import FinetuneRecipe, StepHook, train_classifier
from server.evaluation.downstream_kit import DownstreamKit, LabeledData
from server.evaluation.evaluation_progress import ArmPlan, EvaluationProgress
from server.evaluation.image_arms import image_kit
from server.evaluation.pruning import linear_sparsity, make_pruning_permanent, prune_linear_weights
from server.evaluation.safetensors_export import save_state
from server.evaluation.text_arms import text_kit

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: `fedssl simulate` echoes the ServerApp's lines live


PRUNED = ("pruned", "fine-tuned, pruned + recovered")


# The downstream arms by what the task's records are: a new task of an existing data kind
# needs nothing here.
KITS: dict[str, Callable[[RunConfig, nn.Module], DownstreamKit]] = {
    "text": text_kit, "image": image_kit}


def make_kit(config: RunConfig, pretrained: nn.Module) -> DownstreamKit:
    """The downstream kit of `config.task`'s data kind."""
    return KITS[get_task(config.task).data_kind](config, pretrained)


def skipped_downstream() -> dict[str, Any]:
    """The results section of a pretraining-only run (`downstream = false`): no arms."""
    return {"arms": [], "labels": {"labels_used": 0, "classes_in_labeled_set": 0,
                                   "classes_in_test_set": 0, "test_records": 0}}


def run_downstream(
    config: RunConfig, pretrained: nn.Module, run_dir: Path, say: Say = _say
) -> dict[str, Any]:
    """Fine-tune, baseline, prune and evaluate; save models; return the results section.

    Progress (arm, epoch/step, elapsed, ETA) goes to `say` (evaluation_progress.py).
    """
    kit = make_kit(config, pretrained)
    data = kit.data
    recipe = finetune_recipe(config)
    models_dir = run_dir / MODELS_DIR
    models_dir.mkdir(exist_ok=True)
    key, label, _ = kit.classical
    arms = (  # key, label, starting encoder (None: scratch / random init), recipe
        ("finetuned", federated_label("finetuned"), kit.encoder_weights, "finetune"),
        ("baseline", kit.scratch_label, None, "finetune"),
        (key, label, None, "classical"),
        ("probe", federated_label("probe"), kit.encoder_weights, "probe"),
        ("probe_random", "random-init encoder, linear probe (control)", None, "probe"),
    )
    if kit.public_weights is not None:  # what the public model gives without private data
        arms += (
            ("public", "public encoder, no federated adaptation + fine-tune",
             kit.public_weights, "finetune"),
            ("public_probe", "public encoder, no federated adaptation, linear probe",
             kit.public_weights, "probe"),
        )
    progress = EvaluationProgress(
        [_plan(arm, arm_recipe, recipe, data) for arm, _, _, arm_recipe in arms]
        + [_pruning_plan(config, recipe, data)], say)
    results: dict[str, Any] = {}
    trained = {}
    for arm, _, weights, arm_recipe in arms:
        progress.start(arm)
        results[arm], model = evaluate_arm(kit, data, weights, arm_recipe, recipe,
                                           on_step=progress.step)
        progress.finish(None if results[arm] is None else results[arm]["macro_f1"])
        if model is not None:
            save_state(model.state_dict(), models_dir / model_file(arm))
            trained[arm] = model
    if kit.save_extra is not None:
        kit.save_extra(trained["finetuned"], models_dir)

    progress.start(PRUNED[0])
    pruned, results["pruned"] = _prune_and_recover(trained["finetuned"], config, recipe, data,
                                                   progress.step)
    progress.finish(results["pruned"]["macro_f1"])
    save_state(pruned.state_dict(), models_dir / model_file("pruned"))
    present = set(data.train_labels.tolist())
    results["labels"] = {
        "labels_used": len(data.train_labels),
        "classes_in_labeled_set": len(present),
        "classes_in_test_set": len(np.unique(data.test_labels)),
        "test_records": len(data.test_labels),
        **class_balance(data.test_labels),
    }
    results["arms"] = [[arm, arm_label] for arm, arm_label, *_ in arms] + [list(PRUNED)]
    return results


def class_balance(test_labels: np.ndarray) -> dict[str, Any]:
    """How uneven the test classes are: the largest class's share of the test records and
    the ratio of the largest to the smallest class count (classes present in test)."""
    counts = np.unique(np.asarray(test_labels), return_counts=True)[1]
    if len(counts) == 0:
        return {"largest_class_share": 0.0, "class_count_ratio": 0.0}
    return {"largest_class_share": round(float(counts.max() / counts.sum()), 4),
            "class_count_ratio": round(float(counts.max() / counts.min()), 2)}


def _plan(arm: str, arm_recipe: str, recipe: FinetuneRecipe, data: LabeledData) -> ArmPlan:
    """What arm `arm` will do, for its progress lines."""
    labels = len(data.train_labels)
    if arm_recipe == "classical":
        return ArmPlan(arm, "classical", f"classical baseline on {labels} labels")
    if arm_recipe == "probe":
        return ArmPlan(arm, "probe", f"embed {labels} + {len(data.test_labels)} test records, "
                       "fit a logistic regression")
    epochs = recipe.epochs_for(labels)
    steps = epochs * math.ceil(labels / recipe.batch_size)
    return ArmPlan(arm, "train", f"fine-tune on {labels} labels, {_count(epochs, 'epoch')} "
                   f"({_count(steps, 'step')})", steps=steps, epochs=epochs)


def _pruning_plan(config: RunConfig, recipe: FinetuneRecipe, data: LabeledData) -> ArmPlan:
    """The pruning arm: prune, then `prune-recover-epochs` of recovery (if any)."""
    epochs = config.prune_recover_epochs
    if epochs == 0:
        return ArmPlan(PRUNED[0], "evaluate", f"prune {config.prune_amount:.0%}, no recovery")
    steps = epochs * math.ceil(len(data.train_labels) / recipe.batch_size)
    return ArmPlan(PRUNED[0], "train", f"prune {config.prune_amount:.0%}, recover "
                   f"{_count(epochs, 'epoch')} ({_count(steps, 'step')})", steps=steps,
                   epochs=epochs)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _prune_and_recover(
    finetuned: nn.Module, config: RunConfig, recipe: FinetuneRecipe, data: LabeledData,
    on_step: StepHook | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Global magnitude pruning of Linear weights, a short recovery, then evaluation."""
    model = copy.deepcopy(finetuned)
    prune_linear_weights(model, config.prune_amount)
    if config.prune_recover_epochs > 0:
        recovery = FinetuneRecipe(
            epochs=config.prune_recover_epochs,
            batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate * 0.2,  # gentle: repair, don't retrain
            seed=recipe.seed + 1,
        )
        train_classifier(model, data.train_inputs, data.train_labels, recovery,
                         on_step=on_step)
    make_pruning_permanent(model)
    return model, {
        **evaluate_classifier(model, data),
        "sparsity": linear_sparsity(model),
        "amount": config.prune_amount,
        "recover_epochs": config.prune_recover_epochs,
    }
