"""Shared fixtures: a tiny real MLM model and real ICD-10 records, tokenized."""

from __future__ import annotations

import pytest
import torch
from simulation_runs import TINY

from common.data.icd10_corpus import load_icd10_records
from common.data.tokenizer import encode_texts, load_tokenizer
from common.tasks.mlm import MaskedLmModel, build_mlm_model


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def icd_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight real ICD-10 descriptions from different chapters, tokenized."""
    records = load_icd10_records()
    picks = [records.labels.index(c) for c in range(8)]
    return encode_texts(tokenizer, [records.texts[i] for i in picks], TINY.max_length)


@pytest.fixture()
def tiny_mlm(tokenizer) -> MaskedLmModel:
    torch.manual_seed(0)
    model = build_mlm_model(TINY, tokenizer.get_vocab_size()).double()
    # No dropout, so batched and one-at-a-time passes are comparable exactly (train mode stays
    # on: Opacus only records activations in training mode).
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model
