"""The plain-transformers export: the README's own snippet reproduces the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertConfig

from common.data.tokenizer import SHIPPED_TOKENIZER, encode_texts, load_tokenizer
from server.compression.hf_export import export_hf_folder
from server.evaluation.text_classifier import MeanPoolClassifier, build_classifier

MAX_LENGTH = 12
LABELS = ["cholera", "appendicitis", "fracture of femur"]
# Different lengths (so padding is present) and one past MAX_LENGTH (so truncation happens).
TEXTS = [
    "Cholera",
    "Acute appendicitis with localized peritonitis",
    ("Other specified disorders of the kidney and ureter with complications of pregnancy, "
     "childbirth and the puerperium, unspecified trimester"),
    "",
]


def _first_python_block(readme: str) -> str:
    """The first ```python block of the model card: the snippet this test executes."""
    start = readme.index("```python\n") + len("```python\n")
    return readme[start:readme.index("```", start)]


@pytest.fixture(scope="module")
def model() -> MeanPoolClassifier:
    vocab = load_tokenizer(SHIPPED_TOKENIZER).get_vocab_size()
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, num_labels=len(LABELS))
    return build_classifier(config, None, seed=0).eval()


@pytest.fixture(scope="module")
def exported(model: MeanPoolClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "icd-classifier"
    return export_hf_folder(model, SHIPPED_TOKENIZER, LABELS, MAX_LENGTH, out)


def test_the_readme_snippet_reproduces_the_classifier_logits(model, exported, monkeypatch):
    ids, mask = encode_texts(load_tokenizer(SHIPPED_TOKENIZER), TEXTS, MAX_LENGTH)
    long_ids = load_tokenizer(SHIPPED_TOKENIZER).encode(TEXTS[2]).ids
    assert len(long_ids) > MAX_LENGTH and not bool(mask.all())  # truncation and padding
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits

    snippet = _first_python_block((exported / "README.md").read_text(encoding="utf-8"))
    monkeypatch.chdir(exported.parent)  # the card says: run it next to the folder
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert len(namespace["labels"]) == 2 and set(namespace["labels"]) <= set(LABELS)

    names, logits = namespace["classify"](TEXTS)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert names == [LABELS[i] for i in expected.argmax(dim=-1).tolist()]


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[:2]], ids=["truncated", "all-short"])
def test_auto_tokenizer_encodes_as_encode_texts(exported, texts):
    ids, mask = encode_texts(load_tokenizer(SHIPPED_TOKENIZER), texts, MAX_LENGTH)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)

    # padding="max_length": the same encoding, padded on to MAX_LENGTH with [PAD] (id 0).
    padded = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    extra = MAX_LENGTH - ids.shape[1]
    assert torch.equal(padded["input_ids"], torch.nn.functional.pad(ids, (0, extra)))
    assert torch.equal(padded["attention_mask"], torch.nn.functional.pad(mask, (0, extra)))


def test_config_labels_and_weights_load_without_missing_keys(model, exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert model.config.id2label[0] == "LABEL_0"  # the caller's model is left alone

    keys = load_file(exported / "model.safetensors").keys()
    assert not [k for k in keys if k.startswith(("bert.", "pooler.", "classifier."))]
    head = load_file(exported / "classifier.safetensors")
    assert head["weight"].shape == (len(LABELS), 16) and head["bias"].shape == (len(LABELS),)

    encoder, info = AutoModel.from_pretrained(exported, add_pooling_layer=False,
                                              output_loading_info=True)
    assert encoder.pooler is None
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert encoder.config.id2label == dict(enumerate(LABELS))


def test_a_previous_export_is_overwritten_but_another_folder_is_refused(model, tmp_path):
    out = tmp_path / "export"
    export_hf_folder(model, SHIPPED_TOKENIZER, LABELS, MAX_LENGTH, out)
    renamed = ["a", "b", "c"]
    export_hf_folder(model, SHIPPED_TOKENIZER, renamed, MAX_LENGTH, out)
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "c"
    assert not [p for p in tmp_path.iterdir() if p.name != "export"]  # no staging left

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a previous export"):
        export_hf_folder(model, SHIPPED_TOKENIZER, LABELS, MAX_LENGTH, run_dir)
    assert (run_dir / "config.json").read_text() == "{}"
    with pytest.raises(ValueError, match="2 label names"):
        export_hf_folder(model, SHIPPED_TOKENIZER, LABELS[:2], MAX_LENGTH, tmp_path / "new")
