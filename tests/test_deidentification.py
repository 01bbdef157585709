"""De-identification (common/data/deidentification.py): the goals of issue 21 on planted PHI,
the node setting that switches it on, the one seam every node's records pass through, and
`fedssl check-data --deid` (counts only)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from simulation_runs import fedssl_in_process

from client.node_settings import node_settings
from client.node_setup import node_records
from common.data import deidentification
from common.data.deidentification import (
    DeidCounts,
    Span,
    check_engine,
    deidentify,
    detect,
    merge_spans,
    replace_spans,
)
from common.data.planted_phi import (
    PLANTED_TYPES,
    STRUCTURED_TYPES,
    planted_notes,
    score,
    write_planted_folder,
)
from common.run_config import ConfigError, RunConfig
from common.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
NOTES = 300  # seeded: about 12 s for presidio, 8 s for philter (load included)


@pytest.fixture(scope="module")
def notes():
    return planted_notes(NOTES, seed=7)


@pytest.fixture(scope="module")
def presidio_scores(notes):
    planted, _ = notes
    return score(planted, detect([n.text for n in planted], "presidio"))


def test_presidio_meets_the_goals_on_planted_notes(presidio_scores):
    """Issue 21: recall >= 0.98 on every structured type, >= 0.90 on names, precision >= 0.90
    (benchmarks/deid_eval.md has the full-size numbers)."""
    for phi_type in STRUCTURED_TYPES:
        assert presidio_scores.recall(phi_type) >= 0.98, phi_type
    assert presidio_scores.recall("NAME") >= 0.90
    assert presidio_scores.recall("ADDRESS") >= 0.95
    assert presidio_scores.precision() >= 0.90


def test_philter_measured_floor_on_planted_notes(notes):
    """philter-lite misses the structured goal (extensions, UK numbers, URLs, addresses with a
    unit) and types most spans only as [PHI]: its measured floor, not the goal."""
    planted, _ = notes
    scores = score(planted, detect([n.text for n in planted], "philter"))
    assert scores.recall("NAME") >= 0.90
    assert scores.recall("DATE") >= 0.98 and scores.recall("EMAIL") >= 0.98
    assert scores.recall("ID") >= 0.98
    assert scores.structured_recall() >= 0.90
    assert scores.precision() >= 0.90


def test_placeholders_replace_identifiers_and_keep_the_diagnosis(notes):
    planted, _ = notes
    texts, counts = deidentify([n.text for n in planted[:24]], "presidio")
    for note, text in zip(planted[:24], texts, strict=True):
        for span in note.spans:
            if span.phi_type != "NAME":  # names: >= 0.90 only, see above
                assert note.text[span.start:span.end] not in text
    assert "[DATE]" in texts[0] and "[NAME]" in texts[0]
    assert counts.records == 24 and counts.changed_records == 24
    assert set(counts.spans) <= set(deidentification.PHI_TYPES)
    assert all(counts.records_with[t] <= counts.spans[t] for t in counts.spans)


def test_clinical_text_without_identifiers_is_left_alone():
    text = ("Type 2 diabetes mellitus with diabetic chronic kidney disease; hemoglobin 7.2, "
            "eGFR 48 mL/min; follow up in 3 months.")
    assert deidentify([text], "presidio")[0] == [text]


def test_off_changes_nothing_and_counts_nothing():
    texts = ["John Smith, 555-867-5309"]
    assert deidentify(texts, "off") == (texts, DeidCounts("off", 1))


def test_engine_names_are_checked():
    assert check_engine(" Presidio ") == "presidio"
    with pytest.raises(ConfigError, match="'deid'.*off, presidio, philter"):
        check_engine("scrubadub")
    with pytest.raises(ConfigError, match="'sim-deid'"):
        RunConfig.from_mapping({"sim-deid": "yes"})
    with pytest.raises(ConfigError, match="'sim-deid'.*images"):
        RunConfig.from_mapping({"sim-deid": "presidio", "task": "mae"})


def test_spans_merge_and_replace():
    spans = merge_spans([Span(0, 4, "NAME"), Span(2, 9, "ADDRESS"), Span(9, 12, "ADDRESS"),
                         Span(12, 14, "DATE")])
    assert spans == [Span(0, 12, "ADDRESS"), Span(12, 14, "DATE")]
    assert replace_spans("abcdefghijklmnop", spans) == "[ADDRESS][DATE]op"


def test_a_missing_engine_package_is_a_setting_error(monkeypatch):
    deidentification._detector.cache_clear()
    monkeypatch.setitem(sys.modules, "common.data.deid_philter", None)
    try:
        with pytest.raises(ConfigError, match="'deid'.*philter-lite"):
            deidentify(["x"], "philter")
    finally:
        deidentification._detector.cache_clear()


def test_the_node_decides(tmp_path):
    """Deployed: only the node's own `deid` (the run's sim-deid never reaches it);
    simulated: its own key if Flower passes one, else the run's sim-deid."""
    config = RunConfig.from_mapping({"sim-deid": "presidio"})
    deployed = {"data-dir": str(tmp_path), "state-dir": str(tmp_path / "s")}
    assert node_settings(deployed, 1, config, None).deid == "off"
    assert node_settings({**deployed, "deid": "philter"}, 1, config, None).deid == "philter"
    simulated = {"partition-id": 0, "num-partitions": config.num_clients}
    assert node_settings(simulated, 1, config, str(tmp_path)).deid == "presidio"
    assert node_settings({**simulated, "deid": "off"}, 1, config, str(tmp_path)).deid == "off"
    with pytest.raises(ConfigError, match="'deid'"):
        node_settings({**deployed, "deid": "maybe"}, 1, config, None)


def test_every_node_record_path_goes_through_the_node_engine(tmp_path, monkeypatch, notes):
    """The seam: `node_records` (the only way a node's records reach training) de-identifies
    with the node's engine, for a deployed folder and a simulated partition alike."""
    from client import worker_cache

    seen: list[tuple[int, str]] = []
    real = deidentify

    def spy(texts, engine):
        seen.append((len(texts), engine))
        return real(texts, engine)

    monkeypatch.setattr("common.tasks.mlm.deidentify", spy)
    planted, names = notes
    write_planted_folder(planted[:40], names, tmp_path / "data")
    task = get_task("mlm")
    config = RunConfig.from_mapping({"max-records": 2000, "num-clients": 2})

    deployed = node_settings({"data-dir": str(tmp_path / "data"), "state-dir": str(tmp_path),
                              "deid": "presidio"}, 1, config, None)
    cleaned = node_records(task, config, deployed)
    assert seen == [(40, "presidio")]
    raw = node_records(task, config, dataclasses.replace(deployed, deid="off"))
    assert not torch.equal(cleaned[0], raw[0])

    worker_cache.clear()
    for engine in ("presidio", "off"):
        sim_config = config.replace(sim_deid=engine)
        node = node_settings({"partition-id": 1, "num-partitions": 2}, 2, sim_config,
                             str(tmp_path))
        node_records(task, sim_config, node)
        assert seen[-1][1] == engine
    assert len(worker_cache._records) == 2  # one cache entry per engine, never shared
    worker_cache.clear()


def test_image_tasks_refuse_a_deid_setting(tmp_path):
    config = RunConfig.from_mapping({"task": "mae"})
    node = node_settings({"data-dir": str(tmp_path), "state-dir": str(tmp_path),
                          "deid": "presidio"}, 1, config, None)
    with pytest.raises(ConfigError, match="'deid'.*images"):
        node_records(get_task("mae"), config, node)


def test_check_data_deid_prints_counts_never_content(tmp_path, notes):
    planted, names = notes
    write_planted_folder(planted[:60], names, tmp_path / "data")
    code, out, err = fedssl_in_process("check-data", str(tmp_path / "data"), "--deid")
    assert code == 0, err
    assert "de-identification (presidio):" in out and "[NAME]" in out and "[DATE]" in out
    for note in planted[:60]:
        for span in note.spans:
            assert note.text[span.start:span.end] not in out + err
    code, _, err = fedssl_in_process("check-data", str(tmp_path / "data"), "--deid", "nope")
    assert code == 2 and "'--deid'" in err


def test_planted_notes_are_seeded_and_spans_are_exact(notes):
    planted, names = notes
    assert planted_notes(5, seed=3) == planted_notes(5, seed=3)
    # and across processes (string hashing differs between them)
    script = ("from common.data.planted_phi import planted_notes; "
              "print(planted_notes(3, seed=3)[0][2].text)")
    texts = {subprocess.run([sys.executable, "-c", script], env={**os.environ,
                                                                 "PYTHONHASHSEED": str(h)},
                            capture_output=True, text=True, check=True, cwd=ROOT).stdout
             for h in (1, 2)}
    assert len(texts) == 1
    assert {s.phi_type for n in planted for s in n.spans} == set(PLANTED_TYPES)
    assert all(0 <= n.label < len(names) for n in planted)
    for note in planted:
        for span in note.spans:
            value = note.text[span.start:span.end]
            assert value == value.strip() and value
