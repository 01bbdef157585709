"""A data folder is read with bounds: non-regular entries skipped, each file and the folder's
total size capped, an .npy header checked against its file.

Each file is refused over MAX_FILE_BYTES before it is read; a node also holds all its records in
memory, so many files each under that limit must not add up past MAX_FOLDER_BYTES either. The
files here are sparse (their size costs neither disk nor memory), and nothing is read: the
sizes are checked before any file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from simulation_runs import fedssl_in_process

from common.data.data_folders import (
    MAX_FILE_BYTES,
    MAX_FOLDER_BYTES,
    DataFolderError,
    data_files,
    load_text_folder,
)
from common.data.image_folders import load_image_folder


def _sparse_files(folder: Path, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for k in range(count):
        with open(folder / f"part-{k:02d}.txt", "wb") as handle:
            handle.truncate(MAX_FILE_BYTES)  # at the per-file limit, so allowed alone


def test_a_folder_at_the_limit_is_accepted_and_one_byte_more_is_refused(tmp_path):
    assert MAX_FOLDER_BYTES == 8 * 2**30 and MAX_FOLDER_BYTES % MAX_FILE_BYTES == 0
    folder = tmp_path / "data"
    _sparse_files(folder, MAX_FOLDER_BYTES // MAX_FILE_BYTES)  # exactly the limit
    _, names, _ = data_files(folder, (".txt",))
    assert len(names) == MAX_FOLDER_BYTES // MAX_FILE_BYTES
    (folder / "one-more.txt").write_text("x")
    with pytest.raises(DataFolderError) as err:
        load_text_folder(folder)
    assert err.value.kind == "oversize-folder"
    message = str(err.value)
    assert message.startswith(f"data folder {folder}: {MAX_FOLDER_BYTES + 1:,} bytes in 17 files")
    assert f"limit of {MAX_FOLDER_BYTES:,} (8 GiB) per folder" in message
    assert "\n" not in message


def test_check_data_names_the_folder_and_the_limit_in_one_line(tmp_path):
    folder = tmp_path / "notes"
    _sparse_files(folder, MAX_FOLDER_BYTES // MAX_FILE_BYTES + 1)
    code, out, err = fedssl_in_process("check-data", str(folder), "--task", "mlm")
    assert code == 1 and out == ""
    assert err.startswith(f"fedssl check-data: oversize-folder: data folder {folder}: ")
    assert "(8 GiB) per folder" in err and len(err.strip().splitlines()) == 1


def test_non_regular_entries_are_skipped_and_counted(tmp_path):
    """A FIFO would hang a read and a link to /dev/zero would never end one: both are skipped,
    and the report says how many entries were."""
    (tmp_path / "notes.txt").write_text("one record\n", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "zeros.txt").symlink_to("/dev/zero")
    records, report = load_text_folder(tmp_path)
    assert records == ["one record"] and report.skipped == 2
    assert "2 entries skipped: not regular files" in "\n".join(report.summary_lines())


def test_a_file_past_the_size_limit_is_refused_before_it_is_read(tmp_path):
    with open(tmp_path / "huge.txt", "wb") as handle:  # sparse: no disk, no memory
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(DataFolderError) as err:
        load_text_folder(tmp_path)
    assert err.value.kind == "oversize-file" and str(err.value).startswith("huge.txt:")


def test_an_npy_header_claiming_a_huge_array_is_refused_without_allocating(tmp_path):
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
    with open(tmp_path / "forged.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\x00" * 784)  # one image's worth of data, not a billion
    with pytest.raises(DataFolderError) as err:
        load_image_folder(tmp_path)
    assert err.value.kind == "unreadable" and "header describes" in str(err.value)
