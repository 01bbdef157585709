"""`fedssl compress RUN_DIR [--set KEY=VALUE ...]`: quantize and export a finished run's
fine-tuned classifier and measure what each variant costs (docs/compression.md).

Variants, each scored on the run's own test split against the run's fp32 model:
  fp32            the run's models/finetuned.safetensors, PyTorch
  torch-int8      torch dynamic int8 of every Linear layer (compressed/finetuned-int8.pt)
  torch-int8-emb  the same + int8 word embeddings (compressed/finetuned-int8-emb.pt)
  onnx-fp32       ONNX export (compressed/finetuned.onnx), ONNX Runtime: the parity check
  onnx-int8       ONNX Runtime dynamic int8 (compressed/finetuned-int8.onnx)

Exit codes: 0 done; 1 RUN_DIR cannot be compressed (not a finished run, no fine-tuned model,
data changed; one line on stderr, no traceback); 2 a bad `--set`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.data.data_folders import DataFolderError
from common.public_checkpoints import CheckpointError
from common.run_config import ConfigError, parse_overrides
from server.compression.compression_report import (
    PLOT_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    variant_table,
    write_compression_report,
)
from server.compression.finished_run import CompressionError, FinishedRun, load_finished_run
from server.compression.onnx_export import export_onnx, quantize_onnx_int8
from server.compression.torch_int8 import quantize_int8, save_int8
from server.compression.variants import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    TORCH_INT8_EMB_FILE,
    TORCH_INT8_FILE,
    Variant,
    load_variants,
    parameter_count,
    parity,
    score_variant,
)

PROG = "fedssl compress"
OUT_DIR = "compressed"
PROGRESS_GAP_S = 15.0
Say = Callable[[str], None]


def _say(line: str) -> None:
    print(line, flush=True)


def compress_run(run_dir: str | Path, overrides: dict[str, str] | None = None,
                 say: Say = _say) -> dict[str, Any]:
    """Build every variant of RUN_DIR's fine-tuned classifier, score it, write
    RUN_DIR/compressed/; return the results (as in compressed/results.json).

    Raises CompressionError / ConfigError / DataFolderError / CheckpointError for a RUN_DIR
    that cannot be compressed (the command prints them as one line).
    """
    started = time.monotonic()
    say(f"[fedssl] compress: loading {run_dir} and rebuilding its test split")
    run = load_finished_run(run_dir, overrides)
    out = run.run_dir / OUT_DIR
    out.mkdir(exist_ok=True)
    inputs = tuple(t.numpy() for t in run.test_inputs)
    say(f"[fedssl] compress: {len(run.test_labels):,} test records, {run.num_classes} classes, "
        f"{parameter_count(run.model):,} parameters")
    variants = _build_variants(run, out, say)
    results = []
    reference = None
    for number, variant in enumerate(variants, start=1):
        began = time.monotonic()
        say(f"[fedssl] compress: scoring {number}/{len(variants)} {variant.name} "
            f"({variant.label})")
        scored, logits = score_variant(variant, inputs, run.test_labels, run.num_classes,
                                       reference, _throttled(variant.name, say))
        reference = logits if reference is None else reference  # the first is fp32
        results.append(scored)
        say(f"[fedssl] compress: {variant.name} done in {time.monotonic() - began:.1f} s: "
            f"macro-F1 {scored['macro_f1']:.3f}, {scored['bytes']:,} bytes")
    onnx_result = next(r for r in results if r["variant"] == "onnx-fp32")
    summary = {
        "run_dir": str(run.run_dir),
        "test_records": len(run.test_labels),
        "num_classes": run.num_classes,
        "parameters": parameter_count(run.model),
        "run_finetuned": {k: run.summary.get("finetuned", {}).get(k) for k in
                          ("accuracy", "macro_f1")},
        "variants": results,
        "onnx_parity": parity(onnx_result),
    }
    write_compression_report(out, summary)
    if not summary["onnx_parity"]["passed"]:
        say(f"[fedssl] compress: WARNING: ONNX parity failed (max |logit diff| "
            f"{onnx_result['max_abs_logit_diff']:.2e})")
    say(f"[fedssl] compress: done in {time.monotonic() - started:.0f} s; wrote "
        f"{out}/{RESULTS_FILE}, {REPORT_FILE}, {PLOT_FILE}")
    return summary


def _throttled(name: str, say: Say, gap_s: float = PROGRESS_GAP_S,
               clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """Progress of one variant's scoring: a line at most every `gap_s` seconds (a large
    encoder scores a test split of thousands of records for minutes on a few cores)."""
    began = last = clock()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = clock()
        if now - last >= gap_s and done < total:
            last = now
            eta = (now - began) / done * (total - done)
            say(f"[fedssl] compress: {name} {done:,}/{total:,} records, "
                f"{now - began:.0f} s, about {eta:.0f} s left")

    return report


def _build_variants(run: FinishedRun, out: Path, say: Say) -> list[Variant]:
    """Quantize and export into `out`; every variant is then read back from its file, so a
    score is the score of what ships."""
    say("[fedssl] compress: torch dynamic int8 of the Linear layers")
    save_int8(quantize_int8(run.model), out / TORCH_INT8_FILE)
    say("[fedssl] compress: torch dynamic int8 of the Linear layers + int8 word embeddings")
    save_int8(quantize_int8(run.model, word_embeddings=True), out / TORCH_INT8_EMB_FILE)
    say("[fedssl] compress: exporting ONNX")
    export_onnx(run.model, _tracing_example(run.test_inputs), out / ONNX_FILE)
    say("[fedssl] compress: ONNX Runtime dynamic int8")
    quantize_onnx_int8(out / ONNX_FILE, out / ONNX_INT8_FILE)
    return load_variants(run.model, run.weights_file, out)


def _tracing_example(test_inputs: tuple[torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two test records, the last with at least one padding position (export_onnx needs
    one; its values only steer the trace, the graph is the same for any input)."""
    ids, mask = (t[:2].clone() for t in test_inputs)
    if bool(mask.all()):
        mask[-1, -1] = 0
    return ids, mask


def compress_command(run_dir: str, settings: Sequence[str] = ()) -> int:
    """Run `compress_run`, print the variant table; the exit code (module docstring)."""
    try:
        results = compress_run(run_dir, parse_overrides(list(settings)))
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (CompressionError, DataFolderError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(variant_table(results["variants"]))
    parity_result = results["onnx_parity"]
    print(f"ONNX parity: agreement {parity_result['agreement']:.2%}, max |logit diff| "
          f"{parity_result['max_abs_logit_diff']:.2e}")
    return 0 if parity_result["passed"] else 1

