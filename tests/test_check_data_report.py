"""`fedssl check-data` as a new user meets it: every over-long record named (or truncated),
labels and classes, whether `simulate --set data=DIR` accepts the folder, and a warning when
`max-length` keeps only a small part of a typical record. Counts only, never content."""

from __future__ import annotations

import fcntl
import json

import pytest
from simulation_runs import fedssl_in_process, write_text_folder

from common.data.data_folders import (
    MAX_RECORD_CHARS,
    OVERSIZE_SHOWN,
    DataFolderError,
    load_text_folder,
)
from common.data.record_lengths import SAMPLE_RECORDS, length_coverage, run_length_coverage
from common.data.run_splits import text_splits
from common.data.tokenizer import load_tokenizer
from common.run_config import ConfigError, RunConfig
from common.run_layout import LOCK_FILE

SECRET = "ZEBRA-PATIENT-7731 "
LONG = SECRET * (MAX_RECORD_CHARS // len(SECRET) + 5)  # just over the limit


def _long_records_folder(folder):
    """15 over-long records in three files (one past csv's own 128 KiB field limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text("short\n" + "".join(LONG + "\n" for _ in range(12)))
    (folder / "b.jsonl").write_text(json.dumps({"text": "fine", "label": "x"}) + "\n"
                                    + json.dumps({"text": LONG, "label": "y"}) + "\n")
    (folder / "c.csv").write_text('text,label\nok,x\n"' + LONG * 7 + '",y\n"' + LONG + '",x\n')
    return folder


def test_every_over_long_record_is_named_without_content(tmp_path):
    folder = _long_records_folder(tmp_path / "data")
    with pytest.raises(DataFolderError) as caught:
        load_text_folder(folder)
    error = caught.value
    message = str(error)
    assert error.kind == "oversize-record" and "ZEBRA" not in message and "\n" not in message
    assert message.startswith("15 records longer than the limit of 20,000 characters: "
                              "a.txt line 2 (")
    assert f"and {15 - OVERSIZE_SHOWN} more" in message and "truncate-records=true" in message
    assert error.locations == (
        *(("a.txt", f"line {n}") for n in range(2, 14)), ("b.jsonl", "line 2"),
        ("c.csv", "row 2 (line 3)"), ("c.csv", "row 3 (line 4)"))
    # The CLI: exit 1, the summary line, then every position, one line per file.
    code, out, err = fedssl_in_process("check-data", str(folder))
    assert code == 1 and out == "" and "ZEBRA" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("fedssl check-data: oversize-record: 15 records longer")
    assert lines[1:] == ["  a.txt: 12 records: " + ", ".join(f"line {n}" for n in range(2, 14)),
                         "  b.jsonl: 1 record: line 2",
                         "  c.csv: 2 records: row 2 (line 3), row 3 (line 4)"]


def test_truncate_records_cuts_them_and_says_how_many(tmp_path):
    folder = _long_records_folder(tmp_path / "data")
    records, report = load_text_folder(folder, truncate=True)
    assert len(records) == 18 and max(map(len, records)) == MAX_RECORD_CHARS
    assert records[0] == "short" and records[1] == LONG[:MAX_RECORD_CHARS]
    assert report.truncated == 15
    assert "15 records longer than 20,000 characters cut to that length" \
        in "\n".join(report.summary_lines())
    config = RunConfig(data=str(folder), num_clients=2, label_fraction=0.5,
                       truncate_records=True, downstream=False)
    splits = text_splits(config)  # the simulation's loader honours the setting too
    assert max(len(t) for c in splits.client_texts for t in c) == MAX_RECORD_CHARS
    with pytest.raises(DataFolderError):
        text_splits(config.replace(truncate_records=False))
    code, out, err = fedssl_in_process("check-data", str(folder), "--set",
                                       "truncate-records=true")
    assert code == 0 and "ZEBRA" not in out + err
    assert "15 records longer than 20,000 characters cut" in out
    with pytest.raises(ConfigError) as caught:  # images have no text records to cut
        RunConfig.from_mapping({"task": "mae", "truncate-records": "true"})
    assert caught.value.key == "truncate-records"


def test_check_data_reports_labels_and_the_simulation_verdict(tmp_path):
    folder = write_text_folder(tmp_path / "data", records=240, unlabelled_txt=30)
    code, out, err = fedssl_in_process("check-data", str(folder), "--set", "num-clients=4",
                                       "--set", "label-fraction=0.1")
    assert code == 0, err
    assert "labels: 120 labelled records in 3 classes, 150 unlabelled" in out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith(f"fedssl simulate --set data={folder.resolve()}: accepted")
    assert "4 clients hold" in verdict and "patient" not in out + err
    # The split check-data describes is the split the simulation makes.
    splits = text_splits(RunConfig(data=str(folder.resolve()), num_clients=4,
                                   label_fraction=0.1))
    assert (f"the server gets {len(splits.test_texts)} test and "
            f"{len(splits.labeled_texts)} labelled records") in verdict


def test_check_data_says_why_simulation_refuses_and_the_fix(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("".join(f"note {i}\n" for i in range(40)))
    code, out, _ = fedssl_in_process("check-data", str(folder))
    assert code == 0  # a deployed node can use it: labels are a simulation's concern
    assert "labels: 0 labelled records in 0 classes, 40 unlabelled" in out
    verdict = out.strip().splitlines()[-1]
    assert ": refused: setting 'data':" in verdict and "downstream=false" in verdict
    code, out, _ = fedssl_in_process("check-data", str(folder), "--set", "downstream=false")
    assert code == 0 and "accepted with these settings: pretraining only" in out
    code, _, err = fedssl_in_process("check-data", str(folder), "--set", "max-length=2")
    assert code == 2 and "setting 'max-length'" in err


def _long_documents(folder, records: int = 40, words: int = 400):
    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(["the committee discussed the harvest and the weather"] * (words // 8))
    (folder / "docs.txt").write_text("".join(f"{text} {i}\n" for i in range(records)))
    return folder


def test_max_length_warning_names_the_setting_only_when_most_is_cut(tmp_path):
    folder = _long_documents(tmp_path / "docs")
    coverage = run_length_coverage(RunConfig(data=str(folder), downstream=False))
    assert coverage is not None and coverage.median_tokens > 300 and coverage.cut_share == 1
    warning = coverage.warning()
    assert warning is not None and "max-length=48 keeps only" in warning
    assert "--set max-length=" in warning and "\n" not in warning
    roomy = run_length_coverage(RunConfig(data=str(folder), downstream=False,
                                          max_length=1024))
    assert roomy is not None and roomy.warning() is None and roomy.covered == 1
    code, out, _ = fedssl_in_process("check-data", str(folder))
    assert code == 0 and "warning: max-length=48 keeps only" in out
    assert "record length: median" in out
    short = write_text_folder(tmp_path / "short", records=60)
    code, out, _ = fedssl_in_process("check-data", str(short))
    assert code == 0 and "record length: median" in out and "warning:" not in out


def test_length_coverage_samples_at_most_500_records():
    texts = [f"record number {i} " + "word " * (i % 50) for i in range(3 * SAMPLE_RECORDS)]
    coverage = length_coverage(texts, load_tokenizer(), 48)
    assert coverage is not None and coverage.sampled == SAMPLE_RECORDS
    assert coverage == length_coverage(texts, load_tokenizer(), 48)  # a fixed draw
    assert length_coverage([], load_tokenizer(), 48) is None


def test_simulate_warns_at_the_edge_before_anything_starts(tmp_path):
    folder = _long_documents(tmp_path / "docs")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Hold the run's lock: the command stops right after its edge checks (exit 1, busy).
    with open(run_dir / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = fedssl_in_process("simulate", "--out", str(run_dir), "--set",
                                         f"data={folder}", "--set", "downstream=false")
    assert code == 1 and "in use by another run" in err
    assert "fedssl: warning: max-length=48 keeps only" in err
    assert sum("max-length" in line for line in err.splitlines()) == 1
