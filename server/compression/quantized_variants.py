"""The fp32 model, its post-training int8 forms and its ONNX export (no training needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.run_layout import COMPRESSED_DIR
from server.compression.finished_run import FINETUNED_WEIGHTS, FinishedRun
from server.compression.onnx_export import export_onnx, quantize_onnx_int8, tracing_example
from server.compression.torch_int8 import quantize_int8, save_int8
from server.compression.variants import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    TORCH_INT8_EMB_FILE,
    TORCH_INT8_FILE,
    VariantSpec,
    parameter_count,
)

Say = Callable[[str], None]


def quantized_specs(run: FinishedRun, say: Say) -> list[VariantSpec]:
    """Write the int8 and ONNX files into RUN_DIR/compressed/; fp32 (the reference) first."""
    out = Path(COMPRESSED_DIR)
    params = parameter_count(run.model)
    say("[fedssl] compress: torch dynamic int8 of the Linear layers")
    save_int8(quantize_int8(run.model), run.run_dir / out / TORCH_INT8_FILE)
    say("[fedssl] compress: torch dynamic int8 of the Linear layers + int8 word embeddings")
    save_int8(quantize_int8(run.model, word_embeddings=True), run.run_dir / out / TORCH_INT8_EMB_FILE)
    say("[fedssl] compress: exporting ONNX")
    export_onnx(run.model, tracing_example(run.test_inputs), run.run_dir / out / ONNX_FILE)
    say("[fedssl] compress: ONNX Runtime dynamic int8")
    quantize_onnx_int8(run.run_dir / out / ONNX_FILE, run.run_dir / out / ONNX_INT8_FILE)
    return [
        VariantSpec("fp32", "PyTorch fp32 (the run's model)", "torch", str(FINETUNED_WEIGHTS),
                    params),
        VariantSpec("torch-int8", "PyTorch dynamic int8 (Linear layers)", "torch-int8",
                    str(out / TORCH_INT8_FILE), params),
        VariantSpec("torch-int8-emb", "PyTorch dynamic int8 (Linear + word embeddings)",
                    "torch-int8-emb", str(out / TORCH_INT8_EMB_FILE), params),
        VariantSpec("onnx-fp32", "ONNX Runtime fp32", "onnx", str(out / ONNX_FILE), params),
        VariantSpec("onnx-int8", "ONNX Runtime dynamic int8 (MatMul + embeddings)", "onnx",
                    str(out / ONNX_INT8_FILE), params),
    ]
