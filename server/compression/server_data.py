"""What `fedssl compress` may train on: the run's labeled set and its public corpus.

Pruning recovery and distillation train on the server's side of the run only: the labeled
records the run fine-tuned on and the public corpus the run declared (`public-corpus`; by
default the shipped ICD-10-CM headings, disjoint from the demo's records). Client records
never enter: the server never had them. The public texts carry no labels; the teacher's
predictions on them are the signal ("transfer set", Hinton et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data.public_corpus import load_public_corpus
from common.data.tokenizer import encode_texts, load_tokenizer, special_ids
from server.compression.finished_run import FinishedRun


@dataclass(frozen=True)
class ServerData:
    """The labeled set and an encoded sample of the public corpus."""

    labeled_inputs: tuple[torch.Tensor, torch.Tensor]
    labeled_labels: torch.Tensor
    transfer_inputs: tuple[torch.Tensor, torch.Tensor] | None  # None: no public text used
    transfer_name: str  # what the public corpus is (for the report)
    transfer_available: int  # texts in the corpus before sampling


def server_data(run: FinishedRun, transfer_records: int) -> ServerData:
    """The run's labeled set plus at most `transfer_records` public texts (a sample drawn
    with the run's seed, so a rerun trains on the same texts); 0 uses labels only."""
    if transfer_records < 0:
        raise ValueError(f"transfer_records must be >= 0, got {transfer_records}")
    corpus = load_public_corpus(run.config.public_corpus)
    labeled = run.labeled_inputs
    transfer = None
    if transfer_records > 0 and corpus.texts:
        rng = np.random.default_rng(run.config.seed)
        count = min(transfer_records, len(corpus.texts))
        # Sorted, so the sample keeps the corpus order (reproducible encodings, no bias).
        chosen = np.sort(rng.choice(len(corpus.texts), size=count, replace=False))
        tokenizer = load_tokenizer(str(run.tokenizer_file))
        transfer = encode_texts(tokenizer, [corpus.texts[i] for i in chosen],
                                run.config.max_length)
        # One length for both, so distillation can batch labeled and public texts together.
        length = max(labeled[0].shape[1], transfer[0].shape[1])
        pad = special_ids(tokenizer).pad
        labeled, transfer = _padded(labeled, length, pad), _padded(transfer, length, pad)
    return ServerData(labeled_inputs=labeled, labeled_labels=run.labeled_labels,
                      transfer_inputs=transfer, transfer_name=corpus.name,
                      transfer_available=len(corpus.texts))


def _padded(inputs: tuple[torch.Tensor, torch.Tensor], length: int, pad_id: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` right-padded to `length` (padding is masked out, so a
    mean-pooled classifier's logits do not change)."""
    ids, mask = inputs
    extra = length - ids.shape[1]
    if extra <= 0:
        return ids, mask
    return (torch.nn.functional.pad(ids, (0, extra), value=pad_id),
            torch.nn.functional.pad(mask, (0, extra), value=0))
