"""A tiny random BERT checkpoint folder, built on the fly: tests never need the 83 MB package."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel

WORDS = ["the", "patient", "has", "a", "fracture", "of", "left", "arm", "##s"]


def tiny_bert_folder(folder: Path, specials: tuple[str, ...] = (
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_type: str = "bert") -> Path:
    """A random 2-layer BERT saved the way Hugging Face saves a checkpoint."""
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    if model_type != "bert":
        meta = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**meta, "model_type": model_type}))
    return folder
