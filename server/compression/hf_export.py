"""Export the fine-tuned text classifier as a folder that plain transformers can load and use.

`MeanPoolClassifier` classifies the attention-mask-weighted mean of the encoder's token states;
`AutoModelForSequenceClassification` would use BERT's [CLS] pooler instead and predict wrongly.
So the folder holds the encoder as a plain `BertModel` without a pooler (`config.json`,
`model.safetensors`), the linear head on its own (`classifier.safetensors`), a tokenizer that
`AutoTokenizer` loads and that encodes exactly as fedssl's `encode_texts`, and a README.md
model card whose Python snippet does the pooling (tests/test_hf_export.py runs that snippet).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import BertModel

from common.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids
from server.evaluation.text_classifier import MeanPoolClassifier

HEAD_FILE = "classifier.safetensors"
# An existing non-empty out_dir without this file is not a previous export: refuse to write
# into it, so a mistyped path (e.g. the run directory, which has its own config.json and
# tokenizer.json) is never clobbered.
EXPORT_MARKER = HEAD_FILE
SNIPPET_FOLDER = "__FOLDER__"

# The README's snippet; `__FOLDER__` becomes the export folder's name. Kept free of fedssl
# imports: it documents how to use the folder with plain transformers.
SNIPPET = '''\
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "__FOLDER__"
tokenizer = AutoTokenizer.from_pretrained(folder)
# add_pooling_layer=False: the checkpoint has no [CLS] pooler (none is used, none is created).
encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
head = load_file(f"{folder}/classifier.safetensors")  # weight [num_labels, hidden], bias


def classify(texts: list[str]) -> tuple[list[str], torch.Tensor]:
    """Predicted label names and logits [len(texts), num_labels]."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = pooled @ head["weight"].T + head["bias"]
    return [encoder.config.id2label[i] for i in logits.argmax(dim=-1).tolist()], logits


labels, logits = classify(["Cholera due to Vibrio cholerae", "Acute appendicitis"])
print(labels)
'''


def export_hf_folder(model: MeanPoolClassifier, tokenizer_file: Path, label_names: list[str],
                     max_length: int, out_dir: Path) -> Path:
    """Write `model` as a plain-transformers folder at `out_dir` and return `out_dir`.

    Files: `config.json` + `model.safetensors` (the encoder as a `BertModel`, keys without the
    `bert.` prefix, no pooler; `id2label`/`label2id` from `label_names`, index = class id),
    `classifier.safetensors` (`weight` `[C, H]`, `bias` `[C]`), `tokenizer.json` +
    `tokenizer_config.json` (the run's vocabulary from `tokenizer_file`; `model_max_length` =
    `max_length`, so `tokenizer(texts, padding=True, truncation=True)` gives the ids and mask
    of `encode_texts(tokenizer, texts, max_length)`), and README.md (the model card).

    The folder is built in a temporary sibling and moved into place: a new `out_dir` appears
    whole; an existing previous export has its files replaced one by one. A non-empty
    `out_dir` that is not a previous export raises `FileExistsError`; inconsistent arguments
    raise `ValueError`. `model` is not modified.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    _check_arguments(model, label_names, max_length)
    tokenizer = load_tokenizer(tokenizer_file)
    _check_tokenizer_template(tokenizer)
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file())):
        raise FileExistsError(f"{out_dir} exists and is not a previous export (no "
                              f"{EXPORT_MARKER}); choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                    dir=out_dir.parent))
    try:
        _write_encoder(model, label_names, staging)
        _write_head(model, staging)
        # load_tokenizer has already switched off any padding/truncation the file carried;
        # AutoTokenizer then pads and truncates only as the call asks.
        tokenizer.save(str(staging / "tokenizer.json"))
        _write_json(staging / "tokenizer_config.json", _tokenizer_config(max_length))
        (staging / "README.md").write_text(
            _model_card(out_dir.name, label_names, max_length, model), encoding="utf-8")
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_arguments(model: MeanPoolClassifier, label_names: list[str], max_length: int) -> None:
    classes = model.classifier.out_features
    if len(label_names) != classes:
        raise ValueError(f"{len(label_names)} label names for a classifier with {classes} "
                         "classes")
    if len(set(label_names)) != len(label_names):
        raise ValueError("label names must be unique (label2id maps each name to one id)")
    limit = model.config.max_position_embeddings
    if not 2 <= max_length <= limit:
        raise ValueError(f"max_length {max_length} must be in [2, {limit}] (the [CLS] and "
                         "[SEP] tokens, up to the encoder's position embeddings)")


def _check_tokenizer_template(tokenizer: Tokenizer) -> None:
    # encode_texts and AutoTokenizer's truncation agree only when the tokenizer wraps every
    # text as [CLS] ... [SEP]: both then keep the first max_length - 2 tokens.
    special = special_ids(tokenizer)
    if tokenizer.encode("").ids != [special.cls, special.sep]:
        raise ValueError("the tokenizer does not wrap texts as [CLS] ... [SEP] (no BERT "
                         "post-processor); its exported encoding would differ from fedssl's")


def _write_encoder(model: MeanPoolClassifier, label_names: list[str], folder: Path) -> None:
    # A copy of the config, so the caller's model keeps its own labels and architectures.
    config = copy.deepcopy(model.config)
    config.architectures = ["BertModel"]
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}
    encoder = BertModel(config, add_pooling_layer=False)
    # strict: a pruned model (weight_orig/weight_mask) or any other mismatch fails here.
    encoder.load_state_dict(model.bert.state_dict(), strict=True)
    encoder.save_pretrained(folder)


def _write_head(model: MeanPoolClassifier, folder: Path) -> None:
    head = {"weight": model.classifier.weight, "bias": model.classifier.bias}
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in head.items()}
    save_file(tensors, str(folder / HEAD_FILE), metadata={"format": "pt"})


def _tokenizer_config(max_length: int) -> dict:
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return {
        # PreTrainedTokenizerFast reads tokenizer.json as is (transformers 4 and 5); a
        # BertTokenizer class could rebuild the pipeline from a vocabulary instead.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "padding_side": "right",
        "truncation_side": "right",
        # fedssl's models take no token_type_ids (all zeros, BertModel's default).
        "model_input_names": ["input_ids", "attention_mask"],
        "pad_token": pad, "unk_token": unk, "cls_token": cls, "sep_token": sep,
        "mask_token": mask,
    }


def _model_card(folder_name: str, label_names: list[str], max_length: int,
                model: MeanPoolClassifier) -> str:
    config = model.config
    snippet = SNIPPET.replace(SNIPPET_FOLDER, folder_name)
    return f"""# fedssl text classifier

A BERT encoder ({config.num_hidden_layers} layers, hidden size {config.hidden_size}) with a linear head
over **{len(label_names)} labels**, fine-tuned by fedssl (`MeanPoolClassifier`).

## The head: mean pooling, not [CLS]

The classifier takes the encoder's last hidden states, averages them over the non-padding
tokens (weighted by `attention_mask`), and applies one linear layer:

    logits = mean_pool(last_hidden_state, attention_mask) @ weight.T + bias

There is no [CLS] pooler. **Do not load this folder with
`AutoModelForSequenceClassification`**: it would pool the [CLS] token through a newly
initialised pooler and classifier and predict wrongly.

| file | content |
|---|---|
| `config.json`, `model.safetensors` | the encoder, a plain `BertModel` without pooler; load it with `AutoModel.from_pretrained(folder, add_pooling_layer=False)` |
| `classifier.safetensors` | the head: `weight` `[{len(label_names)}, {config.hidden_size}]`, `bias` `[{len(label_names)}]` |
| `tokenizer.json`, `tokenizer_config.json` | the run's tokenizer, for `AutoTokenizer` |

## Labels

The label names are `id2label` in `config.json` (`label2id` the reverse): class id `i`, the
index of a logit, is `config.id2label[i]`.

## Input encoding

`tokenizer(texts, padding=True, truncation=True)` wraps each text as `[CLS] ... [SEP]` and
truncates it to {max_length} tokens (`model_max_length`), padding on the right with
`[PAD]`: the encoding fedssl trained and evaluated with. `padding="max_length"` gives the
same logits (padding is masked out of the mean).

## Usage (transformers, safetensors, torch)

Run from the folder that contains `{folder_name}/`:

```python
{snippet}```
"""


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty folder: take its place whole, as for a new one
    if not out_dir.exists():
        staging.chmod(0o755)  # mkdtemp makes it private (0o700)
        os.replace(staging, out_dir)  # the whole folder appears at once
        return
    for path in staging.iterdir():  # a previous export: replace the files this one owns
        os.replace(path, out_dir / path.name)
