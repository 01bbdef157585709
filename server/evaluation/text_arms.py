"""The text task's downstream pieces: ICD-10 labels, the BERT classifier, TF-IDF baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertConfig

from common.data.run_splits import text_splits
from common.data.tokenizer import encode_texts, load_tokenizer
from common.public_checkpoints import load_encoder
from common.run_config import RunConfig
from common.run_layout import FINETUNED_HF_DIR
from common.tasks.mlm import bert_config, encoder_state, tokenizer_path
from common.tasks.public_encoder import merged_encoder_state, run_checkpoint
from server.evaluation.downstream_kit import DownstreamKit, LabeledData
from server.evaluation.text_classifier import (
    build_classifier,
    lower_encoder_layers,
    pooled_features,
)
from server.evaluation.tfidf_baseline import tfidf_logreg


def text_kit(config: RunConfig, pretrained: nn.Module) -> DownstreamKit:
    """Labeled texts (ICD-10 or the run's own `data`), a mean-pooled BERT classifier, TF-IDF
    + logistic regression. Probe features are the mean-pooled states of the frozen encoder.
    """
    splits = text_splits(config)
    num_classes = len(splits.label_names)
    tokenizer = load_tokenizer(tokenizer_path(config))
    data = LabeledData(
        train_inputs=encode_texts(tokenizer, splits.labeled_texts, config.max_length),
        train_labels=torch.as_tensor(splits.labeled_labels, dtype=torch.long),
        test_inputs=encode_texts(tokenizer, splits.test_texts, config.max_length),
        test_labels=np.asarray(splits.test_labels),
        num_classes=num_classes,
        train_raw=splits.labeled_texts,
        test_raw=splits.test_texts,
    )
    if config.init != "none":
        # The checkpoint's own architecture; the federated adapters merged into its weights.
        bert_cfg = BertConfig.from_pretrained(str(run_checkpoint(config.init).folder),
                                              num_labels=num_classes)
        weights = merged_encoder_state(pretrained.encoder)
        public = {k: v.detach().clone()
                  for k, v in load_encoder(run_checkpoint(config.init)).state_dict().items()}
        # "From scratch" is the small from-config BERT (the shape settings) on the checkpoint's
        # tokenizer: a random 22M-parameter encoder fine-tuned on a few labels says nothing a
        # small one does not, at many times the cost.
        scratch_cfg = bert_config(config.model_shape, tokenizer.get_vocab_size(), num_classes)
        scratch_label = (f"small BERT from scratch ({config.model_shape.num_layers} layers, "
                         f"hidden {config.model_shape.hidden_size})")
    else:
        bert_cfg = bert_config(config.model_shape, tokenizer.get_vocab_size(), num_classes)
        weights = encoder_state(pretrained)
        public = None
        scratch_cfg, scratch_label = bert_cfg, "same architecture from scratch"

    def classifier(weights: dict[str, torch.Tensor] | None) -> nn.Module:
        return build_classifier(bert_cfg if weights is not None else scratch_cfg, weights,
                                seed=config.seed)

    def tfidf(labeled: LabeledData, seed: int) -> np.ndarray:
        return np.asarray(tfidf_logreg(labeled.train_raw, labeled.train_labels.tolist(),
                                       labeled.test_raw))

    def features(weights: dict[str, torch.Tensor] | None,
                 inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        return pooled_features(classifier(weights), inputs).numpy()

    def save_hf(model: nn.Module, models_dir: Path) -> None:
        model.save_pretrained(models_dir / FINETUNED_HF_DIR)

    return DownstreamKit(
        data=data,
        build_classifier=classifier,
        encoder_weights=weights,
        classical=("tfidf", "TF-IDF (1-2 grams) + logistic regression", tfidf),
        features=features,
        seed=config.seed,
        lower_layers=lower_encoder_layers,
        save_extra=save_hf,
        public_weights=public,
        scratch_label=scratch_label,
    )
