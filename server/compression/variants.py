"""The compressed variants of one classifier and what each costs on the test split.

Every variant is a batch function `(input_ids, attention_mask) -> logits` plus the file a
deployment would ship. Each is scored on the same test records as the run's fine-tuned arm:
macro-F1 and accuracy (server/evaluation/classifier_training.classification_metrics, the
run's own definition), file size in bytes, and how far its logits and predicted classes are
from the fp32 PyTorch model's (for the ONNX fp32 export this is the parity check).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from server.compression.onnx_export import onnx_logits, onnx_session
from server.compression.torch_int8 import load_int8
from server.evaluation.classifier_training import classification_metrics

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ids, mask -> [B, C] float32
Done = Callable[[int, int], None]  # (records scored, records in all), after every batch
EVAL_BATCH = 256
# ONNX fp32 must reproduce PyTorch fp32 up to float rounding of a reordered computation.
PARITY_TOLERANCE = 1e-3
# The files `fedssl compress` writes into RUN_DIR/compressed/.
TORCH_INT8_FILE = "finetuned-int8.pt"
TORCH_INT8_EMB_FILE = "finetuned-int8-emb.pt"
ONNX_FILE = "finetuned.onnx"
ONNX_INT8_FILE = "finetuned-int8.onnx"


@dataclass(frozen=True)
class Variant:
    """One deployable form of the classifier."""

    name: str  # short key: fp32, torch-int8, torch-int8-emb, onnx-fp32, onnx-int8
    label: str  # what it is, for tables
    file: Path  # what a deployment ships (its size is the variant's size)
    logits: Logits


def torch_logits(model: nn.Module) -> Logits:
    """A PyTorch classifier (eval mode, no grad) as a batch logits function."""
    model.eval()

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(input_ids),
                        attention_mask=torch.as_tensor(attention_mask))
        return out.logits.float().numpy()

    return run


def load_variants(model: nn.Module, weights_file: Path, out_dir: Path, threads: int = 0
                  ) -> list[Variant]:
    """Every variant, read from the files in `out_dir` (the fp32 `model` is the reference
    and the architecture the int8 files load onto); ONNX Runtime sessions with `threads`
    intra-op threads (0: its default)."""
    onnx_fp32 = onnx_session(out_dir / ONNX_FILE, threads)
    onnx_int8 = onnx_session(out_dir / ONNX_INT8_FILE, threads)
    return [
        Variant("fp32", "PyTorch fp32 (the run's model)", weights_file, torch_logits(model)),
        Variant("torch-int8", "PyTorch dynamic int8 (Linear layers)", out_dir / TORCH_INT8_FILE,
                torch_logits(load_int8(model, out_dir / TORCH_INT8_FILE))),
        Variant("torch-int8-emb", "PyTorch dynamic int8 (Linear + word embeddings)",
                out_dir / TORCH_INT8_EMB_FILE,
                torch_logits(load_int8(model, out_dir / TORCH_INT8_EMB_FILE,
                                       word_embeddings=True))),
        Variant("onnx-fp32", "ONNX Runtime fp32", out_dir / ONNX_FILE,
                lambda ids, mask: onnx_logits(onnx_fp32, ids, mask)),
        Variant("onnx-int8", "ONNX Runtime dynamic int8 (MatMul + embeddings)",
                out_dir / ONNX_INT8_FILE, lambda ids, mask: onnx_logits(onnx_int8, ids, mask)),
    ]


def all_logits(logits: Logits, inputs: tuple[np.ndarray, np.ndarray],
               batch_size: int = EVAL_BATCH, on_batch: Done | None = None) -> np.ndarray:
    """Logits of every record `[N, C]`, computed `batch_size` records at a time."""
    ids, mask = inputs
    chunks = []
    for start in range(0, len(ids), batch_size):
        chunks.append(logits(ids[start:start + batch_size], mask[start:start + batch_size]))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(ids)), len(ids))
    if not chunks:
        raise ValueError("no records to score")
    return np.concatenate(chunks).astype(np.float32)


def parameter_count(model: nn.Module) -> int:
    """Parameters of the fp32 model (quantization changes their width, not their number)."""
    return sum(p.numel() for p in model.parameters())


def score_variant(variant: Variant, inputs: tuple[np.ndarray, np.ndarray],
                  labels: np.ndarray, num_classes: int,
                  reference: np.ndarray | None, on_batch: Done | None = None
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """Test metrics, size and distance from the fp32 `reference` logits (None: this is it);
    `on_batch` hears of every scored batch (progress lines)."""
    logits = all_logits(variant.logits, inputs, on_batch=on_batch)
    predicted = logits.argmax(axis=1)
    result: dict[str, Any] = {
        "variant": variant.name,
        "label": variant.label,
        "file": variant.file.name,
        "bytes": variant.file.stat().st_size,
        **{k: v for k, v in classification_metrics(labels, predicted, num_classes).items()
           if k in ("accuracy", "macro_f1")},
    }
    if reference is not None:
        result.update(agreement(reference, logits))
    return result, logits


def agreement(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Share of records whose predicted class equals the reference's, and the largest
    absolute logit difference over all records and classes."""
    if reference.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {logits.shape}")
    same = reference.argmax(axis=1) == logits.argmax(axis=1)
    return {"agreement": float(np.mean(same)),
            "max_abs_logit_diff": float(np.max(np.abs(reference - logits)))}


def parity(result: dict[str, Any]) -> dict[str, Any]:
    """The ONNX fp32 parity verdict from its scored result. The verdict is the logit gap:
    two logits closer than float rounding may still swap an argmax, so an agreement just
    under 1 with a tiny gap is a tie, not a broken export."""
    passed = result["max_abs_logit_diff"] <= PARITY_TOLERANCE
    return {"agreement": result["agreement"], "max_abs_logit_diff": result["max_abs_logit_diff"],
            "tolerance": PARITY_TOLERANCE, "passed": bool(passed)}
