"""`fedssl compress RUN_DIR [--set KEY=VALUE ...] [options]`: prune, distil, quantize and
export a finished run's fine-tuned classifier and measure what each variant costs
(docs/compression.md).

Variants, each scored on the run's own test split against the run's fp32 model:
  fp32, torch-int8, torch-int8-emb, onnx-fp32 (the parity check), onnx-int8
  magnitude                the run's own unstructured pruning (models/pruned.safetensors)
  heads-ffn-R[-onnx-int8]  R% of heads and FFN neurons removed, recovered by distillation
  student[-onnx-int8]      a small BERT distilled from the fine-tuned model
  student-labels-only      the same student trained on the labels alone
plus compressed/hf/, the fp32 model as a folder plain transformers loads.

Recovery and distillation train only on what the server holds: the run's labeled set and its
public corpus (server/compression/server_data.py), never client records.

Exit codes: 0 done; 1 RUN_DIR cannot be compressed (not a finished run, no fine-tuned model,
data changed; one line on stderr, no traceback) or ONNX parity failed; 2 a bad option.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.data.data_folders import DataFolderError
from common.public_checkpoints import CheckpointError
from common.run_config import ConfigError, parse_overrides
from common.run_layout import COMPRESSED_DIR
from server.compression.compress_progress import throttled
from server.compression.compression_report import (
    PLOT_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    variant_table,
    write_compression_report,
)
from server.compression.compression_settings import (
    CompressionSettings,
    CompressionSettingsError,
)
from server.compression.finished_run import CompressionError, FinishedRun, load_finished_run
from server.compression.hf_export import export_hf_folder
from server.compression.pruned_variants import pruned_specs, unstructured_spec
from server.compression.quantized_variants import quantized_specs
from server.compression.server_data import server_data
from server.compression.student_variants import student_specs
from server.compression.teacher_targets import teacher_targets
from server.compression.variants import (
    VariantSpec,
    load_variants,
    parameter_count,
    parity,
    score_variant,
    write_manifest,
)

PROG = "fedssl compress"
HF_DIR = "hf"
Say = Callable[[str], None]


def _say(line: str) -> None:
    print(line, flush=True)


def compress_run(run_dir: str | Path, overrides: dict[str, str] | None = None,
                 settings: CompressionSettings | None = None, say: Say = _say
                 ) -> dict[str, Any]:
    """Build every variant of RUN_DIR's fine-tuned classifier, score it, write
    RUN_DIR/compressed/; return the results (as in compressed/results.json).

    Raises CompressionError / ConfigError / DataFolderError / CheckpointError for a RUN_DIR
    that cannot be compressed (the command prints them as one line).
    """
    settings = settings or CompressionSettings()
    started = time.monotonic()
    say(f"[fedssl] compress: loading {run_dir} and rebuilding its test split")
    run = load_finished_run(run_dir, overrides)
    out = run.run_dir / COMPRESSED_DIR
    out.mkdir(exist_ok=True)
    inputs = tuple(t.numpy() for t in run.test_inputs)
    say(f"[fedssl] compress: {len(run.test_labels):,} test records, {run.num_classes} classes, "
        f"{parameter_count(run.model):,} parameters")
    specs, trained_on = _build_variants(run, settings, say)
    write_manifest(out, specs)
    hf_folder = _hf_folder(run, out / HF_DIR, say)
    variants = load_variants(run.run_dir, run.model)
    results = []
    reference = None
    for number, variant in enumerate(variants, start=1):
        began = time.monotonic()
        say(f"[fedssl] compress: scoring {number}/{len(variants)} {variant.name} "
            f"({variant.label})")
        scored, logits = score_variant(variant, inputs, run.test_labels, run.num_classes,
                                       reference, throttled(variant.name, say))
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
        "settings": {**vars(settings), "prune_ratios": list(settings.prune_ratios)},
        "trained_on": trained_on,
        "hf_folder": hf_folder,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_compression_report(out, summary)
    if not summary["onnx_parity"]["passed"]:
        say(f"[fedssl] compress: WARNING: ONNX parity failed (max |logit diff| "
            f"{onnx_result['max_abs_logit_diff']:.2e})")
    say(f"[fedssl] compress: done in {time.monotonic() - started:.0f} s; wrote "
        f"{out}/{RESULTS_FILE}, {REPORT_FILE}, {PLOT_FILE}")
    return summary


def _build_variants(run: FinishedRun, settings: CompressionSettings, say: Say
                    ) -> tuple[list[VariantSpec], dict[str, Any]]:
    """Quantize, export, prune and distil into RUN_DIR/compressed/; the specs (every variant
    is then read back from its file, so a score is the score of what ships) and what the
    trained variants learned from."""
    specs = quantized_specs(run, say) + unstructured_spec(run)
    trained_on: dict[str, Any] = {"labeled_records": len(run.labeled_labels)}
    if not settings.prune_ratios and settings.distill_epochs == 0:
        return specs, trained_on
    data = server_data(run, settings.transfer_records)
    transfer = 0 if data.transfer_inputs is None else len(data.transfer_inputs[0])
    trained_on.update(public_corpus=data.transfer_name, public_records=transfer,
                      public_available=data.transfer_available)
    say(f"[fedssl] compress: the fine-tuned model labels {len(data.labeled_labels)} labeled "
        f"+ {transfer:,} public texts ({data.transfer_name}); client records are never used")
    targets = teacher_targets(run.model, data, throttled("teacher", say, "batches"))
    specs += pruned_specs(run, targets, settings, say)
    specs += student_specs(run, targets, settings, say)
    return specs, trained_on


def _hf_folder(run: FinishedRun, folder: Path, say: Say) -> str | None:
    """Export the fp32 model as a folder plain transformers loads; a tokenizer the export
    cannot reproduce (not BERT-style) skips it with a line saying why, as the variants do
    not depend on it. Returns the folder relative to RUN_DIR, or None."""
    try:
        export_hf_folder(run.model, run.tokenizer_file, run.label_names,
                         run.config.max_length, folder)
    except ValueError as err:
        say(f"[fedssl] compress: no plain-transformers folder: {err}")
        return None
    say(f"[fedssl] compress: the fp32 model as a plain-transformers folder: {folder}")
    return str(folder.relative_to(run.run_dir))


def settings_from_options(options: Any) -> CompressionSettings:
    """The command line's options (argparse namespace) as validated settings."""
    if options is None:
        return CompressionSettings()
    if options.quantize_only:
        return CompressionSettings(prune_ratios=(), distill_epochs=0)
    text = options.prune_ratios.strip().lower()
    try:
        ratios = () if text in ("", "none") else tuple(float(r) for r in text.split(","))
    except ValueError:
        raise CompressionSettingsError(f"--prune-ratios: {options.prune_ratios!r} is not a "
                                       "comma-separated list of numbers (or 'none')") from None
    return CompressionSettings(prune_ratios=ratios, recover_epochs=options.recover_epochs,
                               distill_epochs=options.distill_epochs,
                               transfer_records=options.transfer_records)


def compress_command(run_dir: str, settings: Sequence[str] = (), options: Any = None) -> int:
    """Run `compress_run`, print the variant table; the exit code (module docstring)."""
    try:
        results = compress_run(run_dir, parse_overrides(list(settings)),
                               settings_from_options(options))
    except (ConfigError, CompressionSettingsError) as err:
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

