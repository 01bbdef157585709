"""The `contrastive` task: a public encoder adapted with DP-valid contrastive learning.

Records are tokenized as for `mlm` (the checkpoint's tokenizer); the objective and its proof
are in common/tasks/public_contrastive.py. The public negatives are NEGATIVES texts of the
run's public corpus (`public-corpus`: by default the ICD-10-CM headings, public and disjoint
from the records; or a user's public text of their domain, common/data/public_corpus.py),
picked with the run seed, so server and nodes embed the same texts.
"""

from __future__ import annotations

import hashlib

import numpy as np

from common.config_error import ConfigError
from common.data.public_corpus import load_public_corpus
from common.data.tokenizer import encode_texts, load_tokenizer, special_ids
from common.run_config import RunConfig
from common.run_layout import TOKENIZER_FILE
from common.tasks import SslTask
from common.tasks.mlm import check_data as check_text_data
from common.tasks.mlm import client_tensors, folder_tensors, tokenizer_path
from common.tasks.public_contrastive import PublicContrastive, per_record_loss
from common.tasks.public_encoder import adapted_encoder, checkpoint_inputs_sha256

NEGATIVES = 256


def public_negatives(config: RunConfig) -> list[str]:
    """The run's public negative texts (seeded pick from the public corpus)."""
    texts = load_public_corpus(config.public_corpus).texts
    if len(texts) < NEGATIVES:
        raise ConfigError("public-corpus", f"holds {len(texts):,} texts; the contrastive task "
                          f"draws {NEGATIVES} distinct public negatives from it: give at least "
                          f"{NEGATIVES}")
    picks = np.random.default_rng(config.seed).choice(len(texts), NEGATIVES, replace=False)
    return [texts[i] for i in sorted(picks)]


def build_model(config: RunConfig) -> PublicContrastive:
    """The public encoder with the run's adapters, a projection, and the public negatives."""
    tokenizer = load_tokenizer(tokenizer_path(config))
    ids, mask = encode_texts(tokenizer, public_negatives(config), config.max_length)
    return PublicContrastive(adapted_encoder(config), special_ids(tokenizer), ids, mask)


def public_inputs_sha256(config: RunConfig) -> str:
    """Checkpoint, tokenizer and the negative texts: everything public a round depends on;
    with a `public-corpus` of the user's, the whole corpus too (a node whose copy differs
    anywhere refuses, not only where the seeded pick happens to look)."""
    negatives = hashlib.sha256("\n".join(public_negatives(config)).encode()).hexdigest()
    inputs = f"{checkpoint_inputs_sha256(config)}:{negatives}"
    if config.public_corpus:
        inputs += f":public-corpus:{load_public_corpus(config.public_corpus).sha256}"
    return hashlib.sha256(inputs.encode()).hexdigest()


def check_data(config: RunConfig) -> None:
    """The run's text splits, and its public negatives (a bad `public-corpus` fails here,
    before the run starts)."""
    check_text_data(config)
    public_negatives(config)


TASK = SslTask(
    name="contrastive",
    data_kind="text",
    build_model=build_model,
    client_tensors=client_tensors,
    folder_tensors=folder_tensors,
    public_inputs_sha256=public_inputs_sha256,
    public_files=lambda config: {TOKENIZER_FILE: tokenizer_path(config)},
    per_record_loss=per_record_loss,
    check_data=check_data,
    grad_sample_mode="hooks",  # two encoder passes per record: hooks sum them exactly
    needs_checkpoint=True,
    public_negatives=True,
)
