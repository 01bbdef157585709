"""ONNX export of the mean-pooled BERT classifier, ONNX Runtime sessions and ORT dynamic int8.

The graph takes `input_ids` and `attention_mask` (int64, `[batch, sequence]`, both axes
dynamic) and returns `logits` `[batch, num_labels]`: the same contract as
`MeanPoolClassifier(...).logits`, mean pooling included, so a deployment needs no Python
model code. ONNX Runtime's dynamic int8 quantizes MatMul weights and the embedding lookups
(Gather), activations on the fly, with no calibration data.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

INPUT_NAMES = ("input_ids", "attention_mask")
OPSET = 17


class _Logits(nn.Module):
    """The classifier as a plain tensor function, which is what the exporter traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor],
                path: str | Path) -> Path:
    """Export `model` (fp32) to `path`, traced on `example` `(input_ids, attention_mask)`.

    The example must contain padding (some mask zeros): transformers skips the attention mask
    when a traced batch has none, and the trace would then ignore padding for every input.
    """
    if bool(example[1].all()):
        raise ValueError("the tracing example needs padding (an attention_mask with zeros)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Logits(model).eval()
    dynamic = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; its deprecation and
        # tracer warnings are about that choice, and the parity check verifies the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=list(INPUT_NAMES), output_names=["logits"],
            dynamic_axes={"input_ids": {v: k for k, v in dynamic.items()},
                          "attention_mask": {v: k for k, v in dynamic.items()},
                          "logits": {0: "batch"}},
        )
    # The exporter restores the wrapper's training flag recursively: put the model back.
    model.eval()
    return path


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """ONNX Runtime dynamic int8 (weights int8, activations quantized per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a pre-processing hint on the root logger each call
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(target)


def tracing_example(inputs: tuple[torch.Tensor, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two records of `inputs`, the last with at least one padding position (export_onnx
    needs one; its values only steer the trace, the graph is the same for any input)."""
    ids, mask = (t[:2].clone() for t in inputs)
    if bool(mask.all()):
        mask[-1, -1] = 0
    return ids, mask


def onnx_int8_file(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor],
                   target: str | Path) -> Path:
    """Export `model` and quantize it with ONNX Runtime dynamic int8 into `target`; only the
    int8 file is kept (the fp32 PyTorch file is the model's reference form)."""
    target = Path(target)
    fp32 = target.with_name(target.stem + ".fp32-tmp.onnx")
    try:
        export_onnx(model, tracing_example(inputs), fp32)
        return quantize_onnx_int8(fp32, target)
    finally:
        fp32.unlink(missing_ok=True)


def onnx_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; `threads` > 0 fixes its intra-op thread count."""
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, input_ids: np.ndarray,
                attention_mask: np.ndarray) -> np.ndarray:
    """Logits `[batch, num_labels]` (float32) from an exported classifier."""
    feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
             "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
    return session.run(["logits"], feeds)[0]
