"""WordPiece tokenizer: trained on public text only, shipped with the package, loaded anywhere.

A vocabulary trained on private records would leak rare tokens outside any DP guarantee, so the
shipped vocabulary is trained on the public ICD-10-CM headings (see `icd10_corpus`). Rebuild it
with `python -m common.data.tokenizer` (deterministic for the same package versions).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
DEFAULT_VOCAB_SIZE = 4096
SHIPPED_TOKENIZER = Path(__file__).parent / "assets" / "wordpiece-icd10-headings.json"


class TokenizerError(ValueError):
    """A tokenizer file fedssl cannot use; the message says why."""


@dataclass(frozen=True)
class SpecialIds:
    """The ids of a tokenizer's special tokens, read from it: the shipped vocabulary has
    [PAD]=0 … [MASK]=4, a stock BERT one [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103."""

    pad: int = PAD_ID
    unk: int = UNK_ID
    cls: int = CLS_ID
    sep: int = SEP_ID
    mask: int = MASK_ID

    @property
    def first_ordinary(self) -> int:
        """The lowest id above every special token (random replacement tokens start here)."""
        return max(self.pad, self.unk, self.cls, self.sep, self.mask) + 1


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Read the special-token ids from `tokenizer`; TokenizerError if one is missing."""
    found = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, index in found.items() if index is None]
    if missing:
        raise TokenizerError(f"the tokenizer has no {', '.join(missing)} token; a BERT-style "
                             f"WordPiece tokenizer with {', '.join(SPECIAL_TOKENS)} is needed")
    pad, unk, cls, sep, mask = (int(found[token]) for token in SPECIAL_TOKENS)  # type: ignore[arg-type]
    return SpecialIds(pad=pad, unk=unk, cls=cls, sep=sep, mask=mask)


def train_wordpiece(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a lower-casing BERT-style WordPiece tokenizer on `texts` (public text only)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)]
    )
    assert tok.token_to_id("[PAD]") == PAD_ID and tok.token_to_id("[MASK]") == MASK_ID
    return tok


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | Path = SHIPPED_TOKENIZER) -> Tokenizer:
    """Load a tokenizer JSON file (cached per process: tokenizers are read-only here)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    tokenizer = Tokenizer.from_file(str(path))
    # A checkpoint's tokenizer.json may carry its own padding/truncation: fedssl pads and
    # truncates itself (encode_texts), to the run's max-length.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenizer_sha256(path: str | Path) -> str:
    """Content hash of a tokenizer file, so server and clients can prove they share one."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def encode_texts(
    tokenizer: Tokenizer, texts: list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize to `[N, T]` input ids and attention mask, T = min(longest, max_length)."""
    special = special_ids(tokenizer)
    encodings = tokenizer.encode_batch(texts)
    length = min(max_length, max((len(e.ids) for e in encodings), default=2))
    ids = torch.full((len(texts), length), special.pad, dtype=torch.long)
    for i, enc in enumerate(encodings):
        row = enc.ids[:length]
        if len(enc.ids) > length:
            row[-1] = special.sep  # keep the [SEP] terminator after truncation
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, (ids != special.pad).long()


def _rebuild_shipped() -> None:
    from common.data.icd10_corpus import load_public_headings

    SHIPPED_TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
    train_wordpiece(load_public_headings()).save(str(SHIPPED_TOKENIZER))
    print(f"wrote {SHIPPED_TOKENIZER} ({tokenizer_sha256(SHIPPED_TOKENIZER)[:12]})")


if __name__ == "__main__":
    _rebuild_shipped()
