"""`data=PATH`: a user's own folder (deployment formats, optional label/client), split."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from simulation_runs import ROOT, fedssl_in_process, write_text_folder

from common.data.data_folders import DataFolderError, load_text_folder
from common.data.run_splits import image_splits, load_own_records, text_splits
from common.run_config import ConfigError, RunConfig
from common.tasks import check_run_data


def _config(folder, **values) -> RunConfig:
    return RunConfig(data=str(folder), num_clients=4, label_fraction=0.1, **values)


def test_fields_come_from_jsonl_and_csv_and_txt_has_none(tmp_path):
    write_text_folder(tmp_path, records=6, unlabelled_txt=2)
    (tmp_path / "b.csv").write_text("client,text,label\nsite-9,a csv note,7\nsite-9,"
                                    "another,\n")
    own = load_own_records(tmp_path, "text")
    # Files in sorted order: b.csv, more.txt, notes.jsonl.
    assert own.records[:4] == ["a csv note", "another", "follow-up visit 0", "follow-up visit 1"]
    assert own.label_names == ["7", "cardio", "neuro", "resp"]  # strings: not all numeric
    assert own.labels.tolist() == [0, -1, -1, -1, 1, -1, 3, -1, 2, -1]
    assert own.groups is not None and own.groups[2] == -1 and own.groups[0] == own.groups[1]
    # The deployment loader still sees exactly the same records and ignores the fields.
    assert load_text_folder(tmp_path)[0] == own.records


def test_a_bad_label_value_is_a_data_error_naming_the_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok", "label": "x"}\n'
                                      '{"text": "ok", "label": {"nested": 1}}\n')
    with pytest.raises(DataFolderError) as caught:
        load_own_records(tmp_path, "text")
    assert caught.value.kind == "wrong-format" and "a.jsonl line 2" in str(caught.value)
    assert load_text_folder(tmp_path)[0] == ["ok", "ok"]  # deployment: fields ignored


@pytest.mark.parametrize("partition", ["dirichlet", "iid", "column"])
def test_splits_use_labelled_records_for_the_server_only(tmp_path, partition):
    folder = write_text_folder(tmp_path / "data")
    splits = text_splits(_config(folder, partition=partition))
    own = load_own_records(folder, "text")
    labelled = {t for t, lab in zip(own.records, own.labels) if lab >= 0}
    server = splits.test_texts + splits.labeled_texts
    assert server and set(server) <= labelled
    pooled = [t for texts in splits.client_texts for t in texts]
    assert len(pooled) + len(server) == len(own.records)
    assert set(pooled) | set(server) == set(own.records) and not set(pooled) & set(server)
    assert splits.label_names == ["cardio", "neuro", "resp"]
    sizes = [len(c) for c in splits.client_texts]
    if partition == "iid":
        assert max(sizes) - min(sizes) <= 1
    if partition == "column":  # one client per site, holding only that site's records
        for texts in splits.client_texts:
            sites = {int(t.split()[1]) % 4 for t in texts}
            assert len(sites) == 1


def test_splits_are_deterministic_across_processes(tmp_path):
    """The ServerApp and every ClientApp compute the plan independently: it must agree."""
    folder = write_text_folder(tmp_path / "data")
    here = text_splits(_config(folder))
    code = ("import json; from common.data.run_splits import text_splits; "
            "from common.run_config import RunConfig; "
            f"s = text_splits(RunConfig(data={str(folder)!r}, num_clients=4, "
            "label_fraction=0.1)); print(json.dumps([s.test_texts, s.client_texts]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=120).stdout
    assert json.loads(out) == [here.test_texts, here.client_texts]


def test_impossible_own_data_splits_name_the_setting(tmp_path):
    folder = write_text_folder(tmp_path / "data", unlabelled_txt=5)
    with pytest.raises(ConfigError) as caught:  # the .txt records have no client
        text_splits(_config(folder, partition="column"))
    assert caught.value.key == "partition" and "5 record(s)" in str(caught.value)
    folder = write_text_folder(tmp_path / "sites", sites=3)
    with pytest.raises(ConfigError, match="names 3 clients; set num-clients=3") as caught:
        text_splits(_config(folder, partition="column"))
    assert caught.value.key == "num-clients"
    unlabelled = tmp_path / "plain"
    unlabelled.mkdir()
    (unlabelled / "a.txt").write_text("".join(f"note {i}\n" for i in range(50)))
    with pytest.raises(ConfigError, match="no labelled records") as caught:
        text_splits(_config(unlabelled))
    assert caught.value.key == "data"
    with pytest.raises(ConfigError) as caught:
        RunConfig(partition="column").validate()  # column needs the user's data
    assert caught.value.key == "partition"


def test_images_take_labels_from_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        np.save(tmp_path / label / "batch.npy", rng.integers(0, 255, (30, 28, 28), np.uint8))
    pixels = rng.integers(0, 255, (28, 28), np.uint8)
    for i in range(20):  # unlabelled: directly in the folder
        Image.fromarray(pixels).save(tmp_path / f"u{i:02d}.png")
    own = load_own_records(tmp_path, "image")
    assert own.label_names == ["cat", "dog"] and own.labelled == 60
    assert own.labels.tolist() == [0] * 30 + [1] * 30 + [-1] * 20
    config = RunConfig(task="mae", data=str(tmp_path), num_clients=3, label_fraction=0.2)
    splits = image_splits(config, "mnist5k")
    assert set(splits.test_labels.tolist()) == {0, 1} and len(splits.labeled_labels) > 0
    assert sum(len(c) for c in splits.client_images) + len(splits.test_labels) \
        + len(splits.labeled_labels) == 80
    check_run_data(config)  # 1 x 28 x 28: usable by task mae


def test_images_of_the_wrong_shape_fail_at_the_edge(tmp_path):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", np.zeros((40, 32, 32), np.uint8))
    with pytest.raises(DataFolderError, match="expects 1 channel x 28 x 28"):
        check_run_data(RunConfig(task="mae", data=str(tmp_path), num_clients=2,
                                 label_fraction=0.5))


def test_simulate_rejects_a_bad_folder_like_check_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("fine\n")
    (data / "export.docx").write_bytes(b"PK")
    # In this process: neither command gets as far as starting anything.
    check_code, _, check_err = fedssl_in_process("check-data", str(data))
    code, _, err = fedssl_in_process("simulate", "--out", str(tmp_path / "run"),
                                     "--set", f"data={data}")
    assert check_code == 1 and code == 1
    assert err.strip().startswith("fedssl simulate: wrong-format: export.docx")
    # The same kind and message as `fedssl check-data`, only the program name differs.
    assert err.split(":", 1)[1] == check_err.split(":", 1)[1]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    code, _, err = fedssl_in_process("simulate", "--out", str(tmp_path / "run"), "--set",
                                     f"data={tmp_path / 'nope'}")
    assert code == 1 and "missing-folder" in err
