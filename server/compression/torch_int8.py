"""Post-training dynamic int8 quantization of a classifier, with torch's own API.

Dynamic quantization stores each Linear weight as int8 (one scale per tensor) and quantizes
activations on the fly per batch, so it needs no calibration data and no retraining. The word
embeddings are most of a small BERT's bytes (the from-config demo model: 66%), and Linear
quantization leaves them fp32; with `word_embeddings=True` their rows are stored as int8 too
(weight-only, a scale and offset per row). Only the word embeddings: torch's quantized
embedding lookup refuses BERT's position ids (an expanded, non-contiguous buffer), and the
position and token-type tables are small.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

WORD_EMBEDDINGS = "bert.embeddings.word_embeddings"  # MeanPoolClassifier's module name


def quantize_int8(model: nn.Module, word_embeddings: bool = False) -> nn.Module:
    """A copy of `model` (eval mode) with every `nn.Linear` dynamically quantized to int8,
    and with `word_embeddings` its word-embedding rows int8 as well."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    spec: dict[type[nn.Module] | str, object] = {nn.Linear: default_dynamic_qconfig}
    if word_embeddings:
        spec[WORD_EMBEDDINGS] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the API still ships and is
        # torch's own, which is what these variants measure.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


def save_int8(model: nn.Module, path: str | Path) -> None:
    """Write a quantized model's state dict with `torch.save` (safetensors has no quantized
    tensor type); `load_int8` reads it back onto the same architecture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def load_int8(fp32_architecture: nn.Module, path: str | Path,
              word_embeddings: bool = False) -> nn.Module:
    """Quantize a (weights-irrelevant) fp32 model of the same architecture the same way, then
    load the saved int8 state into it: the quantized modules must exist before their packed
    weights load."""
    model = quantize_int8(fp32_architecture, word_embeddings)
    with warnings.catch_warnings():
        # torch's own rebuild of quantized tensors touches its deprecated TypedStorage.
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(Path(path), weights_only=True)  # no pickled code runs
    model.load_state_dict(state)
    return model.eval()
