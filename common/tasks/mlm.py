"""Task `mlm`: a small BERT pretrained by masked language modelling, made exact under Opacus.

Stock `BertForMaskedLM` breaks Opacus' per-sample gradients; three fixes make them exact:
the prediction head's bare `bias` parameter is removed (the decoder keeps its own bias), position
and token-type ids are passed explicitly with a batch dimension, and word embeddings are untied
from the decoder. Only masked positions are decoded (gathered to `[B, K, H]`), which keeps
per-sample gradients exact and skips most of the vocabulary-sized matmul.

The loss is a per-sequence mean over that sequence's masked tokens, then a mean over sequences:
one record's loss term depends on that record alone, as DP-SGD's clipping requires.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.common import log
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from common.data.data_folders import load_text_folder
from common.data.deidentification import DEID_OFF, deidentify
from common.data.public_corpus import load_public_corpus, public_corpus_sha256
from common.data.tokenizer import (
    SHIPPED_TOKENIZER,
    SpecialIds,
    encode_texts,
    load_tokenizer,
    special_ids,
    tokenizer_sha256,
)
from common.run_config import ModelShape, RunConfig
from common.run_layout import TOKENIZER_FILE
from common.tasks import SslTask
from common.tasks.public_encoder import (
    PublicMaskedLm,
    adapted_encoder,
    checkpoint_inputs_sha256,
    run_checkpoint,
)

IGNORE = -100
# The vocabulary matrices (`freeze-embeddings`): 78% of the default model's parameters.
VOCABULARY_PARAMETERS = ("mlm.bert.embeddings.word_embeddings.weight",
                         "mlm.cls.predictions.decoder.weight", "mlm.cls.predictions.decoder.bias")


def bert_config(shape: ModelShape, vocab_size: int, num_labels: int = 2,
                pad_token_id: int = 0) -> BertConfig:
    """A BERT config for `shape`; eager attention and untied embeddings (Opacus needs both)."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=max(shape.max_length, 8),
        type_vocab_size=1,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        num_labels=num_labels,
        attn_implementation="eager",
    )


class MaskedLmModel(nn.Module):
    """`BertForMaskedLM` with the Opacus fixes; `forward` returns logits at masked positions."""

    def __init__(self, config: BertConfig, special: SpecialIds | None = None) -> None:
        super().__init__()
        self.special_ids = special or SpecialIds()  # of the run's tokenizer: masking uses them
        self.mlm = BertForMaskedLM(config)
        self.vocab_size = int(config.vocab_size)
        head = self.mlm.cls.predictions
        # The head's bare `bias` is shared with decoder.bias; Opacus cannot compute per-sample
        # gradients for a parameter that belongs to no supported layer, so give the decoder a
        # private bias and drop the bare one.
        head.decoder.bias = nn.Parameter(head.decoder.bias.detach().clone())
        del head.bias
        head.register_parameter("bias", None)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits `[B, K, V]` at `positions` `[B, K]` (indices into the sequence)."""
        batch, length = input_ids.shape
        hidden = self.mlm.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            # Contiguous: Opacus' ghost-clipping norm sampler for embeddings `view`s its input.
            position_ids=torch.arange(length, device=input_ids.device)
            .expand(batch, length).contiguous(),
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return self.mlm.cls.predictions(torch.gather(hidden, 1, index))


def build_mlm_model(shape: ModelShape, vocab_size: int,
                    special: SpecialIds | None = None) -> MaskedLmModel:
    """A freshly initialised MLM model (weights depend on torch's global seed)."""
    special = special or SpecialIds()
    return MaskedLmModel(bert_config(shape, vocab_size, pad_token_id=special.pad), special)


def encoder_state(model: MaskedLmModel) -> dict[str, torch.Tensor]:
    """The pretrained encoder's weights (`BertModel` keys, no pooler), for fine-tuning."""
    return {k: v.detach().clone() for k, v in model.mlm.bert.state_dict().items()}


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    ids: SpecialIds | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking (15%; of those 80% [MASK], 10% random token, 10% unchanged).

    Every sequence gets at least one masked position so its loss term is defined.
    Returns (corrupted ids `[B, T]`, positions `[B, K]`, labels `[B, K]` with IGNORE padding).
    """
    ids = ids or SpecialIds()
    special = (input_ids == ids.pad) | (input_ids == ids.cls) | (input_ids == ids.sep)
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(special, 2.0)
    chosen = (scores < mask_prob) & ~special
    # Guarantee one masked token: the lowest-scoring maskable position.
    first = scores.argmin(dim=1)
    has_maskable = (~special).any(dim=1)
    chosen[torch.arange(len(input_ids))[has_maskable], first[has_maskable]] = True

    corrupted = input_ids.clone()
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(
        ids.first_ordinary, vocab_size, input_ids.shape, generator=generator
    )  # skip special ids
    corrupted[chosen & (action < 0.8)] = ids.mask
    swap = chosen & (action >= 0.8) & (action < 0.9)
    corrupted[swap] = random_ids[swap]

    counts = chosen.sum(dim=1)
    width = max(int(counts.max().item()) if len(counts) else 1, 1)
    positions = torch.zeros((len(input_ids), width), dtype=torch.long)
    labels = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    for row in range(len(input_ids)):
        idx = chosen[row].nonzero().flatten()
        positions[row, : len(idx)] = idx
        labels[row, : len(idx)] = input_ids[row, idx]
    return corrupted, positions, labels


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over each sequence's own masked tokens: shape `[B]`."""
    token_loss = F.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )  # [B, K]
    counts = (labels != IGNORE).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / counts


# --- the task's hooks for the registry -------------------------------------------------


def tokenizer_path(config: RunConfig) -> str:
    """The run's tokenizer file: the checkpoint's (with `init`), the configured one, or the
    shipped public vocabulary."""
    if config.init != "none":
        return str(run_checkpoint(config.init).tokenizer_file)
    return config.tokenizer or str(SHIPPED_TOKENIZER)


def build_model(config: RunConfig) -> MaskedLmModel | PublicMaskedLm:
    """The run's initial MLM model (seed torch first for reproducible weights): a BERT of the
    configured shape, or with `init` the public encoder with adapters and a tied decoder."""
    tokenizer = load_tokenizer(tokenizer_path(config))
    if config.init != "none":
        return PublicMaskedLm(adapted_encoder(config), special_ids(tokenizer))
    return build_mlm_model(config.model_shape, tokenizer.get_vocab_size(), special_ids(tokenizer))


def public_inputs_sha256(config: RunConfig) -> str:
    """What server and nodes must share: the vocabulary, and with `init` the checkpoint; with
    a `public-corpus` of the user's (the warm start's text), its hash too."""
    digest = checkpoint_inputs_sha256(config) if config.init != "none" \
        else tokenizer_sha256(tokenizer_path(config))
    if not config.public_corpus:
        return digest  # the shipped headings: part of the installed fedssl, like the vocabulary
    return hashlib.sha256(f"{digest}:public-corpus:"
                          f"{public_corpus_sha256(config.public_corpus)}".encode()).hexdigest()


def public_records(config: RunConfig, texts: list[str]) -> tuple[torch.Tensor, ...]:
    """Public texts (the warm start's corpus) tokenized as the model's inputs:
    `(input_ids, attention_mask)`."""
    return encode_texts(load_tokenizer(tokenizer_path(config)), texts, config.max_length)


def client_tensors(config: RunConfig, partition_id: int, deid: str = DEID_OFF
                   ) -> tuple[torch.Tensor, ...]:
    """A simulated client's records (its partition of the demo corpus or of the run's own
    `data`), de-identified with engine `deid` and tokenized: `(input_ids, attention_mask)`."""
    # Imported here: a deployed client, which starts a fresh process per round, never needs
    # the split plans (the embedded corpus's package parses its XML on import, ~3 s).
    from common.data.run_splits import text_splits

    return node_text_tensors(config, text_splits(config).client_texts[partition_id], deid)


def folder_tensors(config: RunConfig, data_dir: Path, deid: str = DEID_OFF
                   ) -> tuple[torch.Tensor, ...]:
    """A deployed node's own text records (its data-dir), de-identified and tokenized like
    `client_tensors`.

    Raises DataFolderError (naming the file, never a record) for an unusable folder.
    """
    texts, _ = load_text_folder(data_dir, truncate=config.truncate_records)
    return node_text_tensors(config, texts, deid)


def node_text_tensors(config: RunConfig, texts: list[str], deid: str
                      ) -> tuple[torch.Tensor, ...]:
    """Where a node's own text records become what it trains on (simulated and deployed
    nodes, every text task): de-identified first with the node's engine (`"off"`: as they
    are), then tokenized. The pass's counts go to the node's own log, never into a reply."""
    texts, counts = deidentify(texts, deid)
    if deid != DEID_OFF:
        log(20, "fedssl node: de-identification (%s) replaced %d spans in %d of %d records",
            deid, counts.total_spans, counts.changed_records, counts.records)
    return encode_texts(load_tokenizer(tokenizer_path(config)), texts, config.max_length)


def per_record_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator
) -> torch.Tensor:
    """Mask a batch of sequences and return each sequence's own MLM loss, shape `[B]`."""
    input_ids, attention_mask = batch
    inner = _inner(model)
    corrupted, positions, labels = mask_tokens(input_ids, inner.vocab_size, generator,
                                               ids=inner.special_ids)
    return per_sequence_loss(model(corrupted, attention_mask, positions), labels)


def _inner(model: nn.Module) -> MaskedLmModel | PublicMaskedLm:
    """The model inside an Opacus GradSampleModule (or the model itself)."""
    return getattr(model, "_module", model)


def check_data(config: RunConfig) -> None:
    """The run's text splits (embedded corpus or the user's folder), built and checked now."""
    from common.data.run_splits import text_splits

    text_splits(config)
    if config.public_corpus:  # an unreadable public corpus fails now, not in the warm start
        load_public_corpus(config.public_corpus)


TASK = SslTask(
    name="mlm",
    data_kind="text",
    build_model=build_model,
    client_tensors=client_tensors,
    folder_tensors=folder_tensors,
    public_inputs_sha256=public_inputs_sha256,
    public_files=lambda config: {TOKENIZER_FILE: tokenizer_path(config)},
    per_record_loss=per_record_loss,
    check_data=check_data,
    grad_sample_mode="ghost",  # 2.0x a non-private step vs 4.3x with hooks (quiet, CPU)
    vocabulary_parameters=VOCABULARY_PARAMETERS,
    frozen_grad_sample_mode="hooks",  # frozen vocabulary: 1.53x vs ghost's 1.92x (quiet)
    public_records=public_records,
    text_canaries=True,
)
