"""Central downstream stage: classifier fine-tuning, metrics, TF-IDF baseline, pruning, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from simulation_runs import TINY

from common.data.icd10_corpus import load_icd10_records
from common.data.tokenizer import encode_texts
from common.run_config import ModelShape
from common.tasks.mlm import bert_config, build_mlm_model, encoder_state
from server.evaluation.classifier_training import (
    FinetuneRecipe,
    classification_metrics,
    predict,
    train_classifier,
)
from server.evaluation.pruning import linear_sparsity, make_pruning_permanent, prune_linear_weights
from server.evaluation.safetensors_export import load_state, save_state
from server.evaluation.text_classifier import build_classifier
from server.evaluation.tfidf_baseline import tfidf_logreg

EYE, PREGNANCY = 6, 14  # two ICD-10 chapters with distinct vocabularies


def _two_chapters(n_a: int, n_b: int, seed: int, skip: int = 0) -> tuple[list[str], np.ndarray]:
    """`n_a` eye and `n_b` pregnancy descriptions (labels 0/1), shuffled; `skip` avoids overlap."""
    records = load_icd10_records()
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for new_label, (chapter, n) in enumerate([(EYE, n_a), (PREGNANCY, n_b)]):
        pool = [t for t, y in zip(records.texts, records.labels, strict=True) if y == chapter]
        picked = rng.permutation(len(pool))[skip : skip + n]
        texts += [pool[i] for i in picked]
        labels += [new_label] * n
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels)[order]


@pytest.fixture(scope="module")
def small_task(tokenizer):
    """200 real texts from 2 chapters (70/30), encoded, plus a tiny 2-label classifier config."""
    texts, labels = _two_chapters(140, 60, seed=0)
    ids, mask = encode_texts(tokenizer, texts, TINY.max_length)
    config = bert_config(TINY, tokenizer.get_vocab_size(), num_labels=2)
    return ids, mask, torch.as_tensor(labels), config


def _mean_loss(model, ids, mask, labels) -> float:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).item()


def test_build_classifier_loads_encoder_exactly(tokenizer):
    torch.manual_seed(1)
    weights = encoder_state(build_mlm_model(TINY, tokenizer.get_vocab_size()))
    config = bert_config(TINY, tokenizer.get_vocab_size(), num_labels=3)
    model = build_classifier(config, weights, seed=2)
    loaded = model.bert.state_dict()
    assert set(weights) == {k for k in loaded if not k.startswith("pooler.")}
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), name
    # Without weights the encoder differs (random init), so the comparison above is meaningful.
    scratch = build_classifier(config, None, seed=2)
    assert not torch.equal(
        scratch.bert.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"]
    )


def test_build_classifier_rejects_mismatched_weights(tokenizer):
    weights = encoder_state(build_mlm_model(TINY, tokenizer.get_vocab_size()))
    config = bert_config(TINY, tokenizer.get_vocab_size(), num_labels=2)
    extra = dict(weights, **{"cls.predictions.decoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected"):
        build_classifier(config, extra)
    missing = {k: v for k, v in weights.items() if "encoder.layer.0.output" not in k}
    with pytest.raises(ValueError, match="missing"):
        build_classifier(config, missing)
    wider = bert_config(ModelShape(hidden_size=64, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_length=32),
                        tokenizer.get_vocab_size(), num_labels=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_classifier(wider, weights)


def test_classifier_mean_pools_over_real_tokens(small_task):
    ids, mask, _, config = small_task
    model = build_classifier(config, None, seed=0).eval()
    assert model.bert.pooler is None  # no unused [CLS] pooler to train, prune or export
    rows = (mask.sum(dim=1) < TINY.max_length - 5).nonzero().flatten()[:8]
    length = int(mask[rows].sum(dim=1).max())  # trim to these rows' longest: no pad columns
    ids, mask = ids[rows, :length], mask[rows, :length]
    padded_ids = torch.cat([ids, torch.zeros(len(rows), 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(len(rows), 5, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        padded = model(input_ids=padded_ids, attention_mask=padded_mask).logits
    torch.testing.assert_close(plain, padded)  # extra padding must not change the prediction


def test_train_classifier_learns_real_subset(small_task):
    ids, mask, labels, config = small_task
    model = build_classifier(config, None, seed=0)
    before = _mean_loss(model, ids, mask, labels)
    lines: list[str] = []
    recipe = FinetuneRecipe(epochs=6, batch_size=32, learning_rate=3e-3, seed=0)
    train_classifier(model, (ids, mask), labels, recipe, progress=lines.append)
    after = _mean_loss(model, ids, mask, labels)
    assert len(lines) == recipe.epochs
    assert after < 0.6 * before, (before, after)

    pred = predict(model, (ids, mask), batch_size=64)
    assert pred.shape == (len(labels),) and pred.dtype == np.int64
    assert set(np.unique(pred)) <= {0, 1}
    majority = max(np.mean(labels.numpy() == 0), np.mean(labels.numpy() == 1))  # 0.7
    accuracy = np.mean(pred == labels.numpy())
    assert accuracy > majority + 0.2, accuracy


def test_train_classifier_is_seeded(small_task):
    ids, mask, labels, config = small_task
    recipe = FinetuneRecipe(epochs=1, batch_size=32, seed=3)
    a = train_classifier(build_classifier(config, None, seed=0), (ids, mask), labels, recipe)
    b = train_classifier(build_classifier(config, None, seed=0), (ids, mask), labels, recipe)
    assert torch.equal(a.classifier.weight, b.classifier.weight)


def test_classification_metrics_macro_over_test_classes():
    # Test classes {0, 1, 2}; class 2 is never predicted (e.g. absent from the labeled set);
    # class 3 exists (num_classes=5) but not in test, so it is not averaged even if predicted.
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 3, 0]
    # class 0: P=2/3 R=2/3 F1=2/3; class 1: P=1/2 R=1/2 F1=1/2; class 2: F1=0.
    metrics = classification_metrics(y_true, y_pred, num_classes=5)
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert metrics["num_test_classes"] == 3
    with pytest.raises(ValueError):
        classification_metrics([0, 5], [0, 0], num_classes=5)


def test_tfidf_logreg_beats_majority():
    train_texts, train_labels = _two_chapters(40, 20, seed=1)
    test_texts, test_labels = _two_chapters(140, 60, seed=1, skip=40)
    pred = tfidf_logreg(train_texts, train_labels, test_texts)
    assert pred.shape == (len(test_texts),)
    accuracy = np.mean(pred == test_labels)
    assert accuracy > 0.7 + 0.15  # majority fraction is 0.7


def test_tfidf_logreg_single_class():
    pred = tfidf_logreg(["fracture of femur", "fracture of tibia"], [18, 18], ["a", "b", "c"])
    assert pred.tolist() == [18, 18, 18]


def test_pruning_survives_recovery_and_becomes_permanent(small_task):
    ids, mask, labels, config = small_task
    model = build_classifier(config, None, seed=0)
    assert linear_sparsity(model) < 0.01
    prune_linear_weights(model, 0.5)
    assert linear_sparsity(model) == pytest.approx(0.5, abs=0.01)

    train_classifier(model, (ids[:64], mask[:64]), labels[:64],
                     FinetuneRecipe(epochs=1, batch_size=32, learning_rate=1e-3))
    assert linear_sparsity(model) >= 0.5 - 0.01  # masks stayed applied during recovery
    make_pruning_permanent(model)
    assert linear_sparsity(model) >= 0.5 - 0.01
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not any(n.endswith(("weight_orig", "weight_mask")) for n in names)
    assert predict(model, (ids[:8], mask[:8])).shape == (8,)


def test_safetensors_round_trip_atomic(tmp_path: Path, small_task):
    _, _, _, config = small_task
    model = build_classifier(config, None, seed=0)
    target = tmp_path / "export" / "model.safetensors"
    save_state(model, target)
    loaded = load_state(target)
    original = model.state_dict()
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]

    # Non-contiguous and storage-sharing tensors are accepted; overwrite is in place.
    base = torch.arange(12.0).reshape(3, 4)
    save_state({"t": base.t(), "a": base, "b": base}, target)
    again = load_state(target)
    assert torch.equal(again["t"], base.t()) and torch.equal(again["b"], base)
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]
