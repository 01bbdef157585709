"""After federated pretraining: fine-tune on the server's few labels, compare, prune, save.

Three arms see exactly the same labeled records and test split: the pretrained encoder
fine-tuned, the identical architecture trained from scratch with the identical recipe (only the
starting weights differ), and TF-IDF + logistic regression. The fine-tuned model is then pruned
by global magnitude, briefly recovered, and evaluated again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.demo_data import demo_splits
from common.mlm_task import MaskedLmModel, bert_config, encoder_state, tokenizer_path
from common.run_config import RunConfig
from common.tokenizer import encode_texts, load_tokenizer
from server.classifier_training import (
    FinetuneRecipe,
    build_classifier,
    classification_metrics,
    predict,
    train_classifier,
)
from server.pruning import linear_sparsity, make_pruning_permanent, prune_linear_weights
from server.safetensors_export import save_state
from server.tfidf_baseline import tfidf_logreg


def run_downstream(
    config: RunConfig,
    pretrained: MaskedLmModel,
    run_dir: Path,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune, baseline, prune and evaluate; save models; return the results section."""
    splits = demo_splits(config)
    num_classes = len(splits.label_names)
    tokenizer = load_tokenizer(tokenizer_path(config))
    train_ids, train_mask = encode_texts(tokenizer, splits.labeled_texts, config.max_length)
    test_ids, test_mask = encode_texts(tokenizer, splits.test_texts, config.max_length)
    train_labels = torch.as_tensor(splits.labeled_labels, dtype=torch.long)
    bert_cfg = bert_config(config.model_shape, tokenizer.get_vocab_size(), num_classes)
    recipe = FinetuneRecipe(
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch_size,
        learning_rate=config.finetune_learning_rate,
        seed=config.seed,
    )
    models_dir = run_dir / "models"
    models_dir.mkdir(exist_ok=True)

    def evaluate(model: torch.nn.Module) -> dict[str, float | int]:
        return classification_metrics(
            splits.test_labels, predict(model, test_ids, test_mask), num_classes
        )

    results: dict[str, Any] = {}
    arms = {"finetuned": encoder_state(pretrained), "baseline": None}
    trained = {}
    for arm, weights in arms.items():
        start = time.monotonic()
        say(f"[fedssl] {arm}: training on {len(train_labels)} labels for {recipe.epochs} epochs")
        model = build_classifier(bert_cfg, weights, seed=config.seed)
        train_classifier(model, train_ids, train_mask, train_labels, recipe)
        results[arm] = {**evaluate(model), "seconds": round(time.monotonic() - start, 1)}
        save_state(model.state_dict(), models_dir / f"{arm}.safetensors")
        trained[arm] = model
    trained["finetuned"].save_pretrained(models_dir / "finetuned-hf")

    start = time.monotonic()
    tfidf_pred = tfidf_logreg(
        splits.labeled_texts, splits.labeled_labels.tolist(), splits.test_texts
    )
    results["tfidf"] = {
        **classification_metrics(splits.test_labels, np.asarray(tfidf_pred), num_classes),
        "seconds": round(time.monotonic() - start, 1),
    }

    pruned, results["pruned"] = _prune_and_recover(
        trained["finetuned"], config, recipe, (train_ids, train_mask, train_labels), evaluate
    )
    save_state(pruned.state_dict(), models_dir / "pruned.safetensors")
    present = set(splits.labeled_labels.tolist())
    results["labels"] = {
        "labels_used": len(train_labels),
        "classes_in_labeled_set": len(present),
        "classes_in_test_set": int(len(np.unique(splits.test_labels))),
        "test_records": len(splits.test_texts),
    }
    return results


def _prune_and_recover(
    finetuned: torch.nn.Module,
    config: RunConfig,
    recipe: FinetuneRecipe,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    evaluate: Callable[[torch.nn.Module], dict[str, float | int]],
) -> tuple[torch.nn.Module, dict[str, Any]]:
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
        train_classifier(model, *train, recovery)
    make_pruning_permanent(model)
    return model, {
        **evaluate(model),
        "sparsity": linear_sparsity(model),
        "amount": config.prune_amount,
        "recover_epochs": config.prune_recover_epochs,
    }
