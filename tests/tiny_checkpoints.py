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


def adapted_tiny_encoder(folder: Path, adapter: str = "lora") -> torch.nn.Module:
    """The tiny checkpoint with rank-2 adapters, B made non-zero (at init B = 0 gives A no
    gradient to check) and dropout off (batched and one-at-a-time passes then agree exactly)."""
    from common.tasks.public_encoder import add_adapters

    encoder = add_adapters(BertModel.from_pretrained(str(folder), add_pooling_layer=False),
                           rank=2, alpha=4, adapter=adapter, seed=1)
    torch.manual_seed(1)
    for name, parameter in encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return encoder
