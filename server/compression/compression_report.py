"""RUN_DIR/compressed/: results.json, report.md (the variant table) and size_vs_f1.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.atomic_json import write_json

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOT_FILE = "size_vs_f1.png"


def write_compression_report(out_dir: Path, results: dict[str, Any]) -> None:
    """Write the results JSON, the Markdown report and the size-vs-macro-F1 plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_FILE, results)
    (out_dir / REPORT_FILE).write_text(report_markdown(results))
    size_plot(results["variants"], out_dir / PLOT_FILE)


def variant_table(variants: list[dict[str, Any]]) -> str:
    """The variants as a Markdown table: size, its ratio to fp32, test metrics, and distance
    from the fp32 PyTorch model."""
    base = variants[0]["bytes"]
    header = ("| variant | file | parameters | size | fp32 size / size | macro-F1 | accuracy "
              "| agrees with fp32 | max abs logit diff |")
    rows = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        agree = f"{v['agreement']:.2%}" if "agreement" in v else "—"
        diff = f"{v['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in v else "—"
        rows.append(f"| {v['label']} | `{v['file']}` | {v['parameters']:,} | "
                    f"{_size(v['bytes'])} | "
                    f"{base / v['bytes']:.2f}× | {v['macro_f1']:.3f} | "
                    f"{v['accuracy']:.3f} | {agree} | {diff} |")
    return "\n".join(rows)


def report_markdown(results: dict[str, Any]) -> str:
    """compressed/report.md: what was compressed, the table, the ONNX parity verdict."""
    parity = results["onnx_parity"]
    verdict = "passed" if parity["passed"] else "FAILED"
    run = results["run_finetuned"]
    own = (f" (the run's own fp32 fine-tuned arm: macro-F1 {run['macro_f1']:.3f}, accuracy "
           f"{run['accuracy']:.3f})") if run.get("macro_f1") is not None else ""
    return f"""# Compressed variants of the fine-tuned classifier

Run `{results['run_dir']}` ({results['parameters']:,} parameters, {results['num_classes']} \
classes), scored on its test split of {results['test_records']:,} records, the records the \
run scored{own}. Sizes are the bytes of the file a deployment ships.

{variant_table(results['variants'])}

ONNX parity ({verdict}): ONNX Runtime fp32 and PyTorch fp32 predict the same class for \
{parity['agreement']:.2%} of the test records; the largest absolute logit difference is \
{parity['max_abs_logit_diff']:.2e} (tolerance {parity['tolerance']:g}).

{_trained_on(results)}{_hf(results)}
Latency is measured separately on a quiet machine (benchmarks/compressed_latency.py).
"""


def _trained_on(results: dict[str, Any]) -> str:
    """What the pruned and distilled variants learned from (never client records)."""
    seen = results.get("trained_on", {})
    if "public_records" not in seen:
        return ""
    settings = results.get("settings", {})
    return (f"Pruning recovery and distillation trained on the run's "
            f"{seen['labeled_records']:,} labeled records and {seen['public_records']:,} of "
            f"the {seen['public_available']:,} texts of its public corpus "
            f"({seen['public_corpus']}), labelled by the fp32 model; never on client records. "
            f"Recovery: {settings.get('recover_epochs')} epochs; student: "
            f"{settings.get('distill_epochs')} epochs.\n\n")


def _hf(results: dict[str, Any]) -> str:
    folder = results.get("hf_folder")
    return (f"`{folder}/` holds the fp32 model as a folder plain transformers loads (its "
            "README.md shows how; the head is a mean over the tokens, not [CLS]).\n"
            if folder else "")


def _size(num_bytes: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def size_plot(variants: list[dict[str, Any]], path: Path) -> None:
    """Macro-F1 against file size (MB), one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    markers = "osD^vP*X"
    for number, v in enumerate(variants):
        # A legend, not labels at the points: variants of nearly the same size and score
        # (fp32 and onnx-fp32; the full int8 ones) would print their names over each other.
        ax.scatter(v["bytes"] / 1e6, v["macro_f1"], s=45, marker=markers[number % len(markers)],
                   label=v["variant"], alpha=0.85)
    # The issue's budget, one macro-F1 point under fp32, drawn and kept in view: without it
    # the axis zooms onto differences of a few ten-thousandths and makes them look large.
    budget = variants[0]["macro_f1"] - 0.01
    ax.axhline(budget, color="grey", linestyle="--", linewidth=1)
    ax.annotate("fp32 − 1 macro-F1 point", (0, budget), textcoords="offset points",
                xytext=(4, 3), fontsize=7, color="grey")
    scores = [v["macro_f1"] for v in variants]
    ax.set_ylim(min(*scores, budget) - 0.005, max(scores) + 0.005)
    ax.set_xlim(left=0)  # from zero, so the gaps between sizes read as their ratios
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("macro-F1 (test split)")
    ax.set_title("Compressed variants: size vs macro-F1")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
