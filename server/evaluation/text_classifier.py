"""The text task's downstream classifier: BERT encoder, mean-pooled, linear head.

The classifier mean-pools the encoder's token states instead of using BERT's [CLS] pooler:
with 598 ICD-10 labels (default shape and recipe) the stock [CLS]+tanh-pooler head underfit
(train loss 0.57, test accuracy 0.69 / macro-F1 0.14) where mean pooling reached 0.81 / 0.46,
in line with a separate ICD-10 trial, which also mean-pooled.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolClassifier(BertForSequenceClassification):
    """`BertForSequenceClassification` that classifies the mask-weighted mean of token states.

    The [CLS] pooler is removed (`bert.pooler is None`), so it neither trains nor gets pruned;
    `model(input_ids=..., attention_mask=...).logits` works as for the parent class.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert.pooler = None

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: object
    ) -> SequenceClassifierOutput:
        """Logits `[B, num_labels]` from the mean of non-padding token states."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def build_classifier(
    config: BertConfig,
    encoder_weights: dict[str, torch.Tensor] | None,
    seed: int | None = None,
) -> BertForSequenceClassification:
    """A randomly initialised `MeanPoolClassifier`, its encoder optionally pretrained.

    `encoder_weights` uses `BertModel` keys without the pooler (as
    `common.tasks.mlm.encoder_state` returns; the classifier has no pooler either). A missing
    pooler is tolerated; any other missing or unexpected key raises `ValueError`, and a shape
    mismatch raises torch's `RuntimeError`. The classification head stays randomly
    initialised. `seed` makes the random init reproducible without touching the global RNG;
    without it, init follows torch's global seed.
    """
    if seed is None:
        model = MeanPoolClassifier(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MeanPoolClassifier(config)
    if encoder_weights is not None:
        result = model.bert.load_state_dict(encoder_weights, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                "encoder weights do not match the classifier's encoder: "
                f"missing {missing}, unexpected {list(result.unexpected_keys)}"
            )
    return model


def lower_encoder_layers(model: MeanPoolClassifier) -> list[torch.nn.Module]:
    """The embeddings and the lower half of the transformer layers (at least one): what
    partial fine-tuning freezes, since lower layers hold the most generic features."""
    layers = model.bert.encoder.layer
    return [model.bert.embeddings, *layers[: max(1, len(layers) // 2)]]


def pooled_features(
    model: MeanPoolClassifier, inputs: tuple[torch.Tensor, ...], batch_size: int = 512
) -> torch.Tensor:
    """Frozen mean-pooled encoder states `[N, H]` (eval mode, no grad) for linear probes."""
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            ids, mask = (t[start : start + batch_size] for t in inputs)
            hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            chunks.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
    return torch.cat(chunks) if chunks else torch.zeros((0, model.config.hidden_size))
