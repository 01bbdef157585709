"""How much of a typical record the run's `max-length` keeps, from a small seeded sample.

The model reads the first `max-length` tokens of each record and never sees the rest. On
long documents (or with a vocabulary that splits their words into many pieces) that can be a
small share of every record, and nothing else would say so. Counts only: nothing here keeps,
prints or logs a record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from common.run_config import RunConfig

SAMPLE_RECORDS = 500  # enough for a stable median; tokenizing 500 records takes well under 1 s
WARN_BELOW = 0.5  # a typical record loses more than half of itself: warn
SUGGEST_CAP = 512  # BERT-family checkpoints have 512 positions; longer costs quadratic time


@dataclass(frozen=True)
class LengthCoverage:
    """Token lengths of sampled records (with [CLS]/[SEP], as the model gets them)."""

    sampled: int
    median_tokens: int
    max_length: int
    cut_share: float  # sampled records longer than max-length

    @property
    def covered(self) -> float:
        """The share of a median-length record that max-length keeps."""
        return min(1.0, self.max_length / max(self.median_tokens, 1))

    def line(self) -> str:
        """One line for reports: median length, share kept, share of records cut."""
        return (f"record length: median {self.median_tokens:,} tokens ({self.sampled:,} "
                f"records sampled, run's tokenizer); max-length={self.max_length} keeps "
                f"{self.covered:.0%} of a typical record; {self.cut_share:.0%} of records are cut")

    def warning(self) -> str | None:
        """One line when most of a typical record is cut off, naming the setting; else None."""
        if self.covered >= WARN_BELOW:
            return None
        suggest = min(SUGGEST_CAP, 32 * math.ceil(self.median_tokens / 32))
        return (f"warning: max-length={self.max_length} keeps only {self.covered:.0%} of a "
                f"typical record (median {self.median_tokens:,} tokens with the run's "
                "tokenizer); the rest is never read: raise it (e.g. --set max-length="
                f"{suggest}; time and memory grow with it) or split records into shorter ones")


def length_coverage(texts: Sequence[str], tokenizer: Tokenizer, max_length: int,
                    sample: int = SAMPLE_RECORDS) -> LengthCoverage | None:
    """Coverage over at most `sample` records (a fixed seeded draw); None without records."""
    if not texts:
        return None
    picked = np.random.default_rng(0).choice(len(texts), size=min(sample, len(texts)),
                                              replace=False)
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch([texts[i] for i in picked])])
    return LengthCoverage(sampled=len(lengths), median_tokens=int(np.median(lengths)),
                          max_length=max_length,
                          cut_share=float(np.mean(lengths > max_length)))


def run_length_coverage(config: RunConfig, texts: Sequence[str] | None = None
                        ) -> LengthCoverage | None:
    """Coverage of the run's own text records (`data`, or `texts` when given) with the run's
    tokenizer and max-length; None for the embedded demo data."""
    # Imported here: the task module loads torch; a run on its own data loads it anyway.
    from common.data.tokenizer import load_tokenizer
    from common.tasks.mlm import tokenizer_path

    if texts is None:
        if not config.data:
            return None
        from common.data.run_splits import text_splits

        splits = text_splits(config)
        texts = [*splits.test_texts, *splits.labeled_texts,
                 *(t for client in splits.client_texts for t in client)]
    return length_coverage(texts, load_tokenizer(tokenizer_path(config)), config.max_length)
