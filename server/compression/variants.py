"""The compressed variants of one classifier and what each costs on the test split.

Every variant is a batch function `(input_ids, attention_mask) -> logits` plus the file a
deployment would ship. Each is scored on the same test records as the run's fine-tuned arm:
macro-F1 and accuracy (server/evaluation/classifier_training.classification_metrics, the
run's own definition), file size in bytes, and how far its logits and predicted classes are
from the fp32 PyTorch model's (for the ONNX fp32 export this is the parity check).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BertConfig

from common.run_layout import COMPRESSED_DIR
from server.compression.onnx_export import onnx_logits, onnx_session
from server.compression.torch_int8 import load_int8
from server.evaluation.classifier_training import classification_metrics
from server.evaluation.safetensors_export import load_state
from server.evaluation.text_classifier import MeanPoolClassifier

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ids, mask -> [B, C] float32
Done = Callable[[int, int], None]  # (records scored, records in all), after every batch
EVAL_BATCH = 256
# ONNX fp32 must reproduce PyTorch fp32 up to float rounding of a reordered computation.
PARITY_TOLERANCE = 1e-3
# The files `fedssl compress` writes into RUN_DIR/compressed/ (COMPRESSED_DIR).
MANIFEST_FILE = "variants.json"
TORCH_INT8_FILE = "finetuned-int8.pt"
TORCH_INT8_EMB_FILE = "finetuned-int8-emb.pt"
ONNX_FILE = "finetuned.onnx"
ONNX_INT8_FILE = "finetuned-int8.onnx"


@dataclass(frozen=True)
class VariantSpec:
    """How to load one variant from its files: written to compressed/variants.json when the
    variants are built, read by scoring and by benchmarks/compressed_latency.py."""

    name: str  # short key, e.g. fp32, onnx-int8, heads-ffn-50, student-onnx-int8
    label: str  # what it is, for tables
    kind: str  # one of LOADERS: torch, torch-int8, torch-int8-emb, onnx
    file: str  # what a deployment ships, relative to RUN_DIR (its size is the variant's size)
    parameters: int  # of the fp32 model the variant was made from
    config: str | None = None  # torch: a folder with the BertConfig (None: the run's model)
    pruned: bool = False  # torch: structured-pruned (its plan lies next to `file`)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return dict(vars(self))


LOADERS = ("torch", "torch-int8", "torch-int8-emb", "onnx")


@dataclass(frozen=True)
class Variant:
    """One deployable form of the classifier, loaded and callable."""

    spec: VariantSpec
    file: Path
    logits: Logits

    @property
    def name(self) -> str:
        """The spec's short key."""
        return self.spec.name

    @property
    def label(self) -> str:
        """The spec's table label."""
        return self.spec.label


def torch_logits(model: nn.Module) -> Logits:
    """A PyTorch classifier (eval mode, no grad) as a batch logits function."""
    model.eval()

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(input_ids),
                        attention_mask=torch.as_tensor(attention_mask))
        return out.logits.float().numpy()

    return run


def write_manifest(out_dir: Path, specs: list[VariantSpec]) -> Path:
    """compressed/variants.json: every built variant, in table order (fp32 first)."""
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps([spec.to_json() for spec in specs], indent=2) + "\n")
    return path


def read_manifest(out_dir: Path) -> list[VariantSpec]:
    """The specs `write_manifest` wrote; FileNotFoundError if the variants were never built."""
    entries = json.loads((out_dir / MANIFEST_FILE).read_text())
    return [VariantSpec(**entry) for entry in entries]


def load_variant(spec: VariantSpec, run_dir: Path, reference: nn.Module, threads: int = 0
                 ) -> Variant:
    """Load `spec` from its file. `reference` is the run's fp32 model: the architecture the
    int8 files load onto and the one a structured-pruned file was cut from. ONNX Runtime
    sessions get `threads` intra-op threads (0: its default)."""
    from server.compression.structured_pruning import load_pruned

    path = run_dir / spec.file
    if spec.kind == "onnx":
        session = onnx_session(path, threads)
        return Variant(spec, path, lambda ids, mask: onnx_logits(session, ids, mask))
    if spec.kind in ("torch-int8", "torch-int8-emb"):
        model = load_int8(reference, path, word_embeddings=spec.kind == "torch-int8-emb")
        return Variant(spec, path, torch_logits(model))
    if spec.kind != "torch":
        raise ValueError(f"unknown variant kind {spec.kind!r} (known: {', '.join(LOADERS)})")
    config = (BertConfig.from_pretrained(str(run_dir / spec.config)) if spec.config
              else reference.config)
    if spec.pruned:
        model = load_pruned(config, path)
    else:
        model = MeanPoolClassifier(config)
        model.load_state_dict(load_state(path))
    return Variant(spec, path, torch_logits(model))


def load_variants(run_dir: Path, reference: nn.Module, threads: int = 0) -> list[Variant]:
    """Every variant in RUN_DIR/compressed/variants.json, loaded from its file."""
    return [load_variant(spec, run_dir, reference, threads)
            for spec in read_manifest(run_dir / COMPRESSED_DIR)]


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
        "kind": variant.spec.kind,
        "file": variant.spec.file,
        "bytes": variant.file.stat().st_size,
        "parameters": variant.spec.parameters,
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
