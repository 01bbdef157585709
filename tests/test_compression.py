"""`fedssl compress RUN_DIR` (issue 19): int8, ONNX, structured pruning, a distilled student.

One tiny finished run is made in-process (the real downstream stage, no Flower: ~10 s) and
compressed once for the module, with small training budgets; every variant is the real thing
(no mocks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from simulation_runs import TINY_RUN, tiny_bert_folder

from common.run_config import RunConfig
from common.tasks import get_task
from server.atomic_json import write_json
from server.compression.compress_command import compress_run
from server.compression.compression_settings import CompressionSettings
from server.compression.finished_run import load_finished_run
from server.compression.onnx_export import export_onnx, onnx_logits, onnx_session
from server.compression.torch_int8 import load_int8, quantize_int8, save_int8
from server.compression.variants import agreement, parity
from server.evaluation.pipeline import run_downstream
from server.run_directory import prepare_run_dir
from simulations.cli import main as fedssl

QUANTIZED = ["fp32", "torch-int8", "torch-int8-emb", "onnx-fp32", "onnx-int8"]
VARIANTS = [*QUANTIZED, "magnitude", "heads-ffn-50", "heads-ffn-50-onnx-int8", "student",
            "student-onnx-int8", "student-labels-only"]
# Small budgets: the test checks the machinery, not how good a 1-epoch recovery is.
FAST = CompressionSettings(prune_ratios=(0.5,), recover_epochs=1, distill_epochs=1,
                           transfer_records=300, importance_records=64)


class FakeClock:
    """Each read advances by `step` (set by the test or the timed call): exact, machine-free."""

    def __init__(self) -> None:
        self.now, self.step = 0.0, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def make_finished_run(run_dir: Path, **settings: str) -> dict[str, Any]:
    """A tiny run's RUN_DIR as `fedssl simulate` leaves it, as far as compression reads it:
    config.json + tokenizer.json (prepare_run_dir), models/ (the real downstream stage) and
    the summary's downstream sections."""
    config = RunConfig.from_mapping({**TINY_RUN, "max-records": 1500, "label-fraction": 0.1,
                                     "run-dir": str(run_dir), **settings})
    prepare_run_dir(config, get_task(config.task).public_files(config))
    torch.manual_seed(0)
    downstream = run_downstream(config, get_task("mlm").build_model(config), run_dir,
                                say=lambda line: None)
    summary = {"finetuned": downstream["finetuned"], "labels": downstream["labels"],
               "arms": downstream["arms"], "task": config.task}
    write_json(run_dir / "summary.json", summary)
    return summary


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, make_finished_run(run_dir)


@pytest.fixture(scope="module")
def compressed(finished) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    return compress_run(finished[0], settings=FAST, say=lines.append), lines


def test_every_variant_is_scored_on_the_runs_own_test_split(finished, compressed):
    run_dir, summary = finished
    results, _ = compressed
    by_name = {v["variant"]: v for v in results["variants"]}
    assert list(by_name) == VARIANTS
    assert results["test_records"] == summary["labels"]["test_records"]
    # The same records and the same model: the fp32 variant reproduces the run's own numbers.
    assert by_name["fp32"]["macro_f1"] == pytest.approx(summary["finetuned"]["macro_f1"],
                                                        abs=1e-12)
    assert by_name["fp32"]["accuracy"] == pytest.approx(summary["finetuned"]["accuracy"],
                                                        abs=1e-12)
    for variant in by_name.values():
        assert variant["bytes"] == (run_dir / variant["file"]).stat().st_size > 0
        assert 0 <= variant["macro_f1"] <= 1 and 0 <= variant["accuracy"] <= 1
    assert by_name["onnx-int8"]["bytes"] < by_name["onnx-fp32"]["bytes"] / 2
    # The word embeddings are most of the tiny model: int8 rows make the file much smaller.
    assert by_name["torch-int8-emb"]["bytes"] < by_name["torch-int8"]["bytes"] / 2
    # int8 changes logits a little, not the classifier: most predictions stay the same.
    for name in ("torch-int8", "torch-int8-emb", "onnx-int8"):
        assert by_name[name]["agreement"] >= 0.8, by_name[name]
        assert 0 < by_name[name]["max_abs_logit_diff"] < 1.0


def test_onnx_reproduces_pytorch_on_the_test_split(compressed):
    results, _ = compressed
    parity_result = results["onnx_parity"]
    assert parity_result["passed"] and parity_result["agreement"] == 1.0
    assert parity_result["max_abs_logit_diff"] < 1e-4


def test_the_results_json_report_and_plot_are_written(finished, compressed):
    out = finished[0] / "compressed"
    results, lines = compressed
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    report = (out / "report.md").read_text()
    assert "| ONNX Runtime dynamic int8" in report and "ONNX parity (passed)" in report
    assert (out / "size_vs_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for number, name in enumerate(VARIANTS, start=1):
        assert any(line.startswith(f"[fedssl] compress: scoring {number}/{len(VARIANTS)} "
                                   f"{name} ")
                   for line in lines), lines
    assert lines[-1].startswith("[fedssl] compress: done in ")


def test_a_run_on_a_public_checkpoint_compresses_with_its_own_architecture(tmp_path: Path):
    folder = tiny_bert_folder(tmp_path / "public-bert")
    run_dir = tmp_path / "run"
    summary = make_finished_run(run_dir, init=str(folder), **{"hidden-size": "8"})
    results = compress_run(run_dir, settings=CompressionSettings(prune_ratios=(),
                                                                 distill_epochs=0),
                           say=lambda line: None)
    by_name = {v["variant"]: v for v in results["variants"]}
    assert by_name["fp32"]["macro_f1"] == pytest.approx(summary["finetuned"]["macro_f1"],
                                                        abs=1e-12)
    assert results["onnx_parity"]["passed"]
    # The checkpoint's width (16), not the shape settings' (8): the saved architecture.
    assert load_finished_run(run_dir).model.config.hidden_size == 16


def test_the_report_reads_without_the_runs_own_numbers(compressed):
    from server.compression.compression_report import report_markdown

    results = {**compressed[0], "run_finetuned": {"accuracy": None, "macro_f1": None}}
    text = report_markdown(results)
    assert "the records the run scored. Sizes" in text and "own fp32" not in text
    assert "the run's own fp32 fine-tuned arm: macro-F1" in report_markdown(compressed[0])


@pytest.mark.parametrize("word_embeddings", [False, True])
def test_saved_int8_file_loads_back_to_the_same_model(finished, tmp_path: Path,
                                                      word_embeddings: bool):
    run = load_finished_run(finished[0])
    quantized = quantize_int8(run.model, word_embeddings)
    save_int8(quantized, tmp_path / "int8.pt")
    loaded = load_int8(run.model, tmp_path / "int8.pt", word_embeddings)
    ids, mask = (t[:16] for t in run.test_inputs)
    with torch.no_grad():
        expected = quantized(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)
        assert not torch.equal(run.model(input_ids=ids, attention_mask=mask).logits, expected)
    assert isinstance(loaded.classifier, torch.ao.nn.quantized.dynamic.Linear)
    embeddings = loaded.bert.embeddings
    assert isinstance(embeddings.word_embeddings, torch.ao.nn.quantized.Embedding) \
        == word_embeddings
    assert isinstance(embeddings.position_embeddings, torch.nn.Embedding)  # see torch_int8.py


def test_parity_fails_for_an_export_of_another_model(finished, tmp_path: Path):
    run = load_finished_run(finished[0])
    other = type(run.model)(run.model.config).eval()  # same architecture, fresh weights
    ids, mask = (t[:32].clone() for t in run.test_inputs)
    mask[-1, -1] = 0
    session = onnx_session(export_onnx(other, (ids[:2], mask[:2]), tmp_path / "other.onnx"))
    with torch.no_grad():
        reference = run.model(input_ids=ids, attention_mask=mask).logits.numpy()
    result = agreement(reference, onnx_logits(session, ids.numpy(), mask.numpy()))
    assert not parity(result)["passed"] and result["max_abs_logit_diff"] > 1e-2


def test_the_hf_folder_loads_with_plain_transformers_plus_the_head(finished):
    """docs/compression.md: BertModel + mask-weighted mean pooling + the linear head."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    run = load_finished_run(finished[0])
    hf_dir = finished[0] / "models" / "finetuned-hf"
    encoder = AutoModel.from_pretrained(hf_dir).eval()
    head = load_file(hf_dir / "model.safetensors")
    ids, mask = (t[:16] for t in run.test_inputs)
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
        expected = run.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits, expected, atol=1e-5)


def test_scoring_progress_is_throttled_with_an_eta():
    from server.compression.compress_progress import throttled

    clock, lines = FakeClock(), []
    report = throttled("onnx-int8", lines.append, gap_s=15, clock=clock)
    clock.step = 5.0
    for done in (256, 512, 768, 1024):  # the clock reads 5, 10, 15, 20 s (it started at 0)
        report(done, 2048)
    clock.step = 20.0
    report(2048, 2048)  # the end, past the gap: the variant's "done" line follows instead
    assert lines == ["[fedssl] compress: onnx-int8 768/2,048 records, 15 s, about 25 s left"]


# ------------------------------------------------------------------ the command's clear errors

def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int) -> str:
    assert fedssl(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("fedssl compress: error: ") and "Traceback" not in err
    return err


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path, capsys):
    assert "not a folder" in _fails(["compress", str(tmp_path / "absent")], capsys, 1)
    assert "no config.json" in _fails(["compress", str(tmp_path)], capsys, 1)


def test_an_unfinished_run_or_one_without_a_model_is_refused(finished, tmp_path: Path,
                                                             capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished[0], run_dir, ignore=shutil.ignore_patterns("compressed"))
    (run_dir / "summary.json").rename(run_dir / "summary.json.bak")
    assert "has not finished" in _fails(["compress", str(run_dir)], capsys, 1)
    (run_dir / "summary.json.bak").rename(run_dir / "summary.json")
    (run_dir / "models" / "finetuned.safetensors").unlink()
    assert "no fine-tuned model" in _fails(["compress", str(run_dir)], capsys, 1)


def test_set_may_only_relocate_inputs(finished, capsys):
    err = _fails(["compress", str(finished[0]), "--set", "seed=3"], capsys, 2)
    assert "setting 'seed'" in err and "data, init, tokenizer" in err


def test_a_config_this_version_cannot_read_is_refused(finished, tmp_path: Path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished[0], run_dir, ignore=shutil.ignore_patterns("compressed"))
    config = json.loads((run_dir / "config.json").read_text())
    write_json(run_dir / "config.json", {**config, "retired-setting": 1})
    err = _fails(["compress", str(run_dir)], capsys, 1)
    assert "config.json: setting 'retired-setting'" in err and "another fedssl version" in err
    write_json(run_dir / "config.json", {**config, "data": str(tmp_path / "moved")})
    assert "point --set data=... at it" in _fails(["compress", str(run_dir)], capsys, 1)


def test_a_changed_test_split_is_refused(finished, tmp_path: Path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished[0], run_dir, ignore=shutil.ignore_patterns("compressed"))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["labels"]["test_records"] += 1
    write_json(run_dir / "summary.json", summary)
    assert "data changed since the run" in _fails(["compress", str(run_dir)], capsys, 1)


def test_bad_compression_options_are_refused(finished, capsys):
    for option in (["--prune-ratios", "1.5"], ["--prune-ratios", "half"],
                   ["--distill-epochs", "-1"], ["--transfer-records", "-5"]):
        err = _fails(["compress", str(finished[0]), *option], capsys, 2)
        assert option[0] in err, err


def test_the_command_prints_the_table(finished, tmp_path: Path, capsys):
    run_dir = tmp_path / "copy"  # the module's run keeps its full set of variants
    shutil.copytree(finished[0], run_dir, ignore=shutil.ignore_patterns("compressed"))
    assert fedssl(["compress", str(run_dir), "--quantize-only"]) == 0
    out = capsys.readouterr().out
    assert "| PyTorch dynamic int8 (Linear layers) |" in out and "ONNX parity: agreement" in out
    results = json.loads((run_dir / "compressed" / "results.json").read_text())
    assert np.isfinite(results["onnx_parity"]["max_abs_logit_diff"])
    assert [v["variant"] for v in results["variants"]] == [*QUANTIZED, "magnitude"]


# ------------------------------------------- benchmarks/compressed_latency.py (no timing here)

def _latency_script():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "compressed_latency.py"
    spec = importlib.util.spec_from_file_location("compressed_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_rounds_interleave_the_variants_and_take_medians():
    bench, clock, order = _latency_script(), FakeClock(), []

    def call(name: str, seconds: list[float]):
        def run() -> None:
            order.append(name)
            clock.step = seconds.pop(0)  # the next clock read (the call's end) is this later
        return run

    medians = bench.interleaved_medians(
        {"a": call("a", [9.0, 0.001, 0.003, 0.002]), "b": call("b", [9.0, 0.010, 0.030, 0.020])},
        repeats=3, warmup=1, clock=clock)
    assert order == ["a", "b"] * 4  # one call each per round, the warm-up round untimed
    assert medians == pytest.approx({"a": 2.0, "b": 20.0})


def test_latency_calls_run_every_variant_on_the_test_records(finished, compressed):
    bench = _latency_script()
    run = load_finished_run(finished[0])
    threads = torch.get_num_threads()
    try:  # the benchmark sets torch's process-wide thread count: give it back to later tests
        calls = bench.variant_calls(run, threads=1, batch=3)
        assert list(calls) == VARIANTS
        outputs = {name: np.asarray(call()) for name, call in calls.items()}
    finally:
        torch.set_num_threads(threads)
    assert {o.shape for o in outputs.values()} == {(3, run.num_classes)}
    np.testing.assert_allclose(outputs["onnx-fp32"], outputs["fp32"], atol=1e-4)
    rows = [{"threads": 1, "batch": b, "variant": v, "ms": ms}
            for b, scale in ((1, 1.0), (32, 10.0))
            for v, ms in zip(QUANTIZED, (4.0 * scale, 2.0 * scale, 2.0 * scale, 3.0 * scale,
                                        1.0 * scale), strict=True)]
    table = bench.latency_table(rows)
    assert "| 1 | fp32 | 4.00 | 1.00× | 40.00 | 1.00× |" in table
    assert "| 1 | onnx-int8 | 1.00 | 4.00× | 10.00 | 4.00× |" in table


# ------------------------------------------------- pruned and distilled variants (trained ones)

def test_structured_pruning_really_shrinks_and_the_student_is_trained(finished, compressed):
    results, _ = compressed
    by_name = {v["variant"]: v for v in results["variants"]}
    fp32, pruned = by_name["fp32"], by_name["heads-ffn-50"]
    # Whole heads and neurons are gone: fewer parameters, a smaller file (not zeros).
    assert pruned["parameters"] < fp32["parameters"] and pruned["bytes"] < fp32["bytes"]
    assert by_name["heads-ffn-50-onnx-int8"]["bytes"] < pruned["bytes"] / 2
    # Unstructured pruning keeps every parameter and the dense file size.
    assert by_name["magnitude"]["parameters"] == fp32["parameters"]
    assert by_name["magnitude"]["bytes"] == pytest.approx(fp32["bytes"], rel=0.01)
    assert by_name["student"]["parameters"] == by_name["student-labels-only"]["parameters"]
    for name in ("heads-ffn-50", "student", "student-labels-only"):
        assert 0 < by_name[name]["macro_f1"] <= 1
    # With the teacher, the student agrees with it more than the labels-only one does.
    assert by_name["student"]["agreement"] > by_name["student-labels-only"]["agreement"]


def test_compression_trains_on_the_labeled_set_and_public_text_only(finished, compressed):
    from common.data.icd10_corpus import load_public_headings
    from common.data.public_corpus import SHIPPED_NAME
    from common.data.tokenizer import encode_texts, load_tokenizer
    from server.compression.server_data import server_data

    run_dir, summary = finished
    results, _ = compressed
    assert results["trained_on"] == {"labeled_records": summary["labels"]["labels_used"],
                                      "public_corpus": SHIPPED_NAME, "public_records": 300,
                                      "public_available": len(load_public_headings())}
    run = load_finished_run(run_dir)
    data = server_data(run, 300)
    # Every transfer row is the encoding of a public heading (and labeled rows are the
    # run's labeled set, padded to the same length).
    headings = load_public_headings()
    tokenizer = load_tokenizer(str(run.tokenizer_file))
    ids, _ = encode_texts(tokenizer, headings, run.config.max_length)
    width = data.transfer_inputs[0].shape[1]
    public_rows = {tuple(row[:width].tolist()) for row in ids}
    assert all(tuple(row.tolist()) in public_rows for row in data.transfer_inputs[0])
    labeled_ids = data.labeled_inputs[0][:, :run.labeled_inputs[0].shape[1]]
    assert torch.equal(labeled_ids, run.labeled_inputs[0])
    assert torch.equal(data.labeled_labels, run.labeled_labels)
