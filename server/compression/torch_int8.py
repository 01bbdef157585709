"""Post-training dynamic int8 quantization of a classifier's Linear layers, with torch's own API.

Dynamic quantization stores each Linear weight as int8 (one scale per tensor) and quantizes
activations on the fly per batch, so it needs no calibration data and no retraining. Only
Linear layers change: the word embeddings (most of a small-vocabulary-sized BERT's bytes) stay
fp32, which bounds how much smaller the file gets; the ONNX Runtime int8 variant
(onnx_export.py) quantizes the embedding lookup too.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every `nn.Linear` dynamically quantized to int8."""
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the API still ships and is
        # torch's own, which is what this variant measures.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def save_int8(model: nn.Module, path: str | Path) -> None:
    """Write a quantized model's state dict with `torch.save` (safetensors has no quantized
    tensor type); `load_int8` reads it back onto the same architecture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def load_int8(fp32_architecture: nn.Module, path: str | Path) -> nn.Module:
    """Quantize a (weights-irrelevant) fp32 model of the same architecture, then load the saved
    int8 state into it: the quantized modules must exist before their packed weights load."""
    model = quantize_linear_int8(fp32_architecture)
    with warnings.catch_warnings():
        # torch's own rebuild of quantized tensors touches its deprecated TypedStorage.
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(Path(path), weights_only=True)  # no pickled code runs
    model.load_state_dict(state)
    return model.eval()
