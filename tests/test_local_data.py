"""A node's data folder: every problem kind, good folders of each format, and `fedssl check-data`.

Every bad folder holds a planted record string; no message, report or CLI output may contain it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from client.check_data_command import check_folder
from common.data.data_folders import DataFolderError, load_text_folder
from common.data.image_folders import load_image_folder
from simulations.cli import main

SECRET = "ZEBRA-PATIENT-7731 has a rare condition"


def _write(folder, name, content: str | bytes):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _assert_clean(text: str) -> None:
    assert SECRET not in text and "ZEBRA" not in text and "rare condition" not in text


def _problem(folder, kind: str, loader=load_text_folder, **kwargs) -> str:
    with pytest.raises(DataFolderError) as caught:
        loader(folder, **kwargs)
    assert caught.value.kind == kind, str(caught.value)
    message = str(caught.value)
    _assert_clean(message)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ text: problems

def test_missing_folder_and_a_file_instead_of_a_folder(tmp_path):
    assert "does not exist" in _problem(tmp_path / "nope", "missing-folder")
    file = _write(tmp_path, "notes.txt", SECRET + "\n")
    assert "not a folder" in _problem(file, "not-a-folder")


def test_no_supported_files(tmp_path):
    _write(tmp_path, ".hidden.txt", SECRET + "\n")  # dot-files are ignored
    _write(tmp_path, ".git/config.txt", SECRET + "\n")
    message = _problem(tmp_path, "no-records")
    assert ".txt" in message and ".csv" in message


def test_unsupported_file_lists_supported_extensions(tmp_path):
    _write(tmp_path, "a.txt", "fine record\n")
    _write(tmp_path, "sub/export.docx", SECRET)
    _write(tmp_path, "z.pdf", SECRET)
    message = _problem(tmp_path, "wrong-format")
    assert message.startswith("sub/export.docx (and 1 more)")
    assert ".txt, .jsonl, .csv" in message


def test_unreadable_file(tmp_path):
    (tmp_path / "gone.txt").symlink_to(tmp_path / "missing-target.txt")
    assert "gone.txt" in _problem(tmp_path, "unreadable")


def test_not_utf8_names_file_and_line(tmp_path):
    _write(tmp_path, "a.txt", b"first record\n" + SECRET.encode() + b" \xff\xfe end\n")
    message = _problem(tmp_path, "not-utf8")
    assert message.startswith("a.txt line 2:") and "UTF-8" in message


def test_blank_only_folder(tmp_path):
    _write(tmp_path, "a.txt", "\n   \n\t\n")
    _write(tmp_path, "b.jsonl", '{"text": "   "}\n\n')
    _write(tmp_path, "c.csv", "text,label\n ,1\n")
    _write(tmp_path, "d.csv", "")
    assert "blank" in _problem(tmp_path, "blank-only")


def test_oversize_record_names_file_line_and_limit(tmp_path):
    _write(tmp_path, "a.txt", "short\n" + SECRET * 600 + "\n")
    message = _problem(tmp_path, "oversize-record")
    assert message.startswith("1 record longer than the limit of 20,000 characters: "
                              "a.txt line 2 (")
    assert "truncate-records=true" in message
    _write(tmp_path, "a.txt", "short\n" + SECRET + "\n")
    message = _problem(tmp_path, "oversize-record", max_record_chars=10)
    assert "a.txt line 2" in message


def test_oversize_csv_field_past_csv_module_limit(tmp_path):
    _write(tmp_path, "a.csv", "text\n\"" + SECRET * 4000 + "\"\n")
    assert "a.csv" in _problem(tmp_path, "oversize-record")


@pytest.mark.parametrize("line, expected", [
    ('{"label": 3, "note": "' + SECRET + '"}', 'no "text" field'),
    ('{"text": 42, "note": "' + SECRET + '"}', '"text" is a int'),
    ('{"text": null}', '"text" is a null'),
    ('{"text": ["' + SECRET + '"]}', '"text" is a list'),
    ('["' + SECRET + '"]', "not an object"),
    ('{"text": "' + SECRET + '"', "not a valid JSON object"),
])
def test_jsonl_problems(tmp_path, line, expected):
    _write(tmp_path, "notes.jsonl", '{"text": "good one"}\n\n' + line + "\n")
    message = _problem(tmp_path, "wrong-format")
    assert message.startswith("notes.jsonl line 3:") and expected in message


@pytest.mark.parametrize("content, expected", [
    ("note,label\n" + SECRET + ",1\n", 'no "text" column'),
    ("text,Text\n" + SECRET + ",x\n", 'more than one "text" column'),
    ("text,label\nfine,1\n" + SECRET + ",1,extra\n", "row 2 (line 3): 3 fields"),
    ("text,label\n\"" + SECRET + "\"junk,1\n", "not valid CSV"),
])
def test_csv_problems(tmp_path, content, expected):
    _write(tmp_path, "notes.csv", content)
    message = _problem(tmp_path, "wrong-format")
    assert message.startswith("notes.csv") and expected in message


# ------------------------------------------------------------------ text: good folders

def test_formats_load_in_sorted_file_order_then_file_order(tmp_path):
    _write(tmp_path, "b.txt", "  beta one \n\n\r\nbeta two\r\n")
    _write(tmp_path, "a.jsonl", json.dumps({"text": " alpha one", "label": 3}) + "\n\n"
           + json.dumps({"text": "alpha two", "extra": [1]}) + "\n"
           + json.dumps({"text": ""}) + "\n")
    _write(tmp_path, "c/d.csv", 'id,Text,label,client\n1,"gamma, one",0,h1\n\n2,gamma two,1,h2\n')
    _write(tmp_path, "c/e.txt", "")  # an empty file among good ones is counted, not an error
    _write(tmp_path, ".DS_Store", b"\x00\x01binary")
    records, report = load_text_folder(tmp_path)
    assert records == ["alpha one", "alpha two", "beta one", "beta two", "gamma, one",
                       "gamma two"]
    counts = {f.name: (f.records, f.blank) for f in report.files}
    assert counts == {"a.jsonl": (2, 2), "b.txt": (2, 2), "c/d.csv": (2, 1), "c/e.txt": (0, 0)}
    assert report.kind == "text" and report.total_records == 6 and report.total_blank == 5
    assert report.shape is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.kind = "image"


def test_csv_quoted_newlines_and_quotes_stay_in_one_record(tmp_path):
    _write(tmp_path, "notes.csv",
           'text,label\r\n"first line\r\nsecond line",1\r\n"she said ""hi""",0\r\n')
    records, report = load_text_folder(tmp_path)
    assert records == ["first line\r\nsecond line", 'she said "hi"']
    assert report.files[0].records == 2


def test_byte_order_mark_and_unicode_line_separators(tmp_path):
    _write(tmp_path, "a.txt", "\ufefffirst\u2028still first\nsecond\x0cpart\n")
    _write(tmp_path, "b.csv", "\ufefftext\nthird\n")
    records, _ = load_text_folder(tmp_path)
    assert records == ["first\u2028still first", "second\x0cpart", "third"]


def test_summary_lines_show_counts_only(tmp_path):
    _write(tmp_path, "a.txt", SECRET + "\n\n" + SECRET + " again\n")
    records, report = load_text_folder(tmp_path)
    assert len(records) == 2
    lines = report.summary_lines()
    _assert_clean("\n".join(lines))
    assert "2 text records in 1 file (1 blank line skipped)" in lines[0]
    assert lines[1] == "  a.txt: 2 records, 1 blank"


def test_summary_lines_are_capped_for_big_folders(tmp_path):
    for k in range(30):
        _write(tmp_path, f"f{k:02d}.txt", "r\n")
    lines = load_text_folder(tmp_path)[1].summary_lines()
    assert len(lines) == 22 and lines[-1] == "  ... and 10 more files"


# ------------------------------------------------------------------ images

def _png(folder, name, pixels: np.ndarray, mode: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(folder / name)


def test_grayscale_png_folder(tmp_path):
    pixels = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    _png(tmp_path, "b.png", pixels)
    _png(tmp_path, "a.png", 255 - pixels)
    images, report = load_image_folder(tmp_path)
    assert images.shape == (2, 1, 4, 5) and images.dtype == np.float32
    np.testing.assert_allclose(images[0, 0], (255 - pixels) / 255, atol=1e-6)
    np.testing.assert_allclose(images[1, 0], pixels / 255, atol=1e-6)
    assert report.kind == "image" and report.shape == (1, 4, 5)
    assert [f.name for f in report.files] == ["a.png", "b.png"]


def test_rgb_images_of_several_formats(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    _png(tmp_path, "a.png", pixels)
    _png(tmp_path, "b.bmp", pixels)
    _png(tmp_path, "c.PNG", np.dstack([pixels, np.full((6, 7), 128, np.uint8)]))  # RGBA
    images, report = load_image_folder(tmp_path)
    assert images.shape == (3, 3, 6, 7) and report.shape == (3, 6, 7)
    for k in range(3):
        np.testing.assert_allclose(images[k], np.moveaxis(pixels, -1, 0) / 255, atol=1e-6)


def test_gray_gif_pgm_and_jpeg_are_one_channel(tmp_path):
    pixels = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    for name in ("a.gif", "b.pgm", "c.jpg", "d.JPEG"):
        _png(tmp_path, name, pixels)
    images, report = load_image_folder(tmp_path)
    assert images.shape == (4, 1, 4, 5) and report.shape == (1, 4, 5)
    np.testing.assert_allclose(images[0, 0], pixels / 255, atol=1e-6)  # GIF: lossless
    np.testing.assert_allclose(images[1, 0], pixels / 255, atol=1e-6)
    np.testing.assert_allclose(images[2, 0], pixels / 255, atol=0.05)  # JPEG: lossy


def test_colour_gif_is_three_channels(tmp_path):
    pixels = np.zeros((4, 5, 3), np.uint8)
    pixels[..., 0] = 200
    _png(tmp_path, "a.gif", pixels)
    images, _ = load_image_folder(tmp_path)
    assert images.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(images[0, 0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(images[0, 1:], 0, atol=1e-6)


def test_sixteen_bit_png_scales_to_unit_range(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    images, _ = load_image_folder(tmp_path)
    np.testing.assert_allclose(images[0, 0], pixels / 65535, atol=1e-6)


@pytest.mark.parametrize("array, expected_first", [
    (np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5), lambda a: a[0][None] / 255),
    (np.linspace(0, 1, 2 * 4 * 5 * 3).reshape(2, 4, 5, 3), lambda a: np.moveaxis(a[0], -1, 0)),
    (np.linspace(0, 1, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5), lambda a: a[0]),
    (np.zeros((2, 4, 5, 1), dtype=np.uint8), lambda a: np.zeros((1, 4, 5))),
])
def test_npy_layouts(tmp_path, array, expected_first):
    np.save(tmp_path / "records.npy", array)
    images, report = load_image_folder(tmp_path)
    assert images.shape[0] == 2 and images.dtype == np.float32
    np.testing.assert_allclose(images[0], expected_first(array), atol=1e-6)
    assert report.files[0].records == 2 and report.shape == images.shape[1:]


def test_npy_and_png_records_combine_when_shapes_agree(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 5), np.uint8))
    _png(tmp_path, "b.png", np.full((4, 5), 255, np.uint8))
    images, report = load_image_folder(tmp_path)
    assert images.shape == (4, 1, 4, 5) and images[3].min() == 1.0
    assert report.total_records == 4


def test_mixed_image_sizes(tmp_path):
    _png(tmp_path, "a.png", np.zeros((4, 5), np.uint8))
    _png(tmp_path, "b.png", np.zeros((5, 4), np.uint8))
    message = _problem(tmp_path, "wrong-format", load_image_folder)
    assert "b.png" in message and "a.png" in message and "same size" in message


def test_mixed_channels(tmp_path):
    _png(tmp_path, "a.png", np.zeros((4, 5), np.uint8))
    _png(tmp_path, "b.png", np.zeros((4, 5, 3), np.uint8))
    assert "3 channels" in _problem(tmp_path, "wrong-format", load_image_folder)


def test_corrupt_png(tmp_path):
    _png(tmp_path, "a.png", np.zeros((4, 5), np.uint8))
    good = (tmp_path / "a.png").read_bytes()
    _write(tmp_path, "b.png", good[:40] + SECRET.encode())
    _write(tmp_path, "c.png", SECRET.encode())
    assert _problem(tmp_path, "unreadable", load_image_folder).startswith("b.png")
    (tmp_path / "b.png").unlink()
    assert _problem(tmp_path, "unreadable", load_image_folder).startswith("c.png")


@pytest.mark.parametrize("make, kind, expected", [
    (lambda p: np.save(p, np.full((2, 4, 5), 1.5)), "wrong-format", "within [0, 1]"),
    (lambda p: np.save(p, np.full((2, 4, 5), np.nan)), "wrong-format", "finite"),
    (lambda p: np.save(p, np.zeros((2, 4, 5), np.int64)), "wrong-format", "dtype int64"),
    (lambda p: np.save(p, np.array([SECRET, None], dtype=object), allow_pickle=True),
     "wrong-format", "Python objects"),
    (lambda p: np.save(p, np.zeros((2, 4, 5, 7))), "wrong-format", "not an image stack"),
    (lambda p: np.save(p, np.zeros((2, 3, 5, 3))), "wrong-format", "ambiguous"),
    (lambda p: np.save(p, np.zeros((20,))), "wrong-format", "not an image stack"),
    (lambda p: p.write_bytes(SECRET.encode()), "unreadable", "not a valid .npy"),
    (lambda p: (np.save(p, np.zeros((50, 4, 5), np.uint8)),
                p.write_bytes(p.read_bytes()[:300])), "unreadable", "truncated"),
])
def test_npy_problems(tmp_path, make, kind, expected):
    make(tmp_path / "x.npy")
    message = _problem(tmp_path, kind, load_image_folder)
    assert message.startswith("x.npy:") and expected in message


def test_image_folder_without_records(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 5), np.uint8))
    _problem(tmp_path, "no-records", load_image_folder)
    _write(tmp_path, "notes.txt", SECRET)
    assert ".npy" in _problem(tmp_path, "wrong-format", load_image_folder)


def test_check_folder_dispatches_on_data_kind(tmp_path):
    _write(tmp_path, "a.txt", "one\n")
    assert check_folder(tmp_path, "text").total_records == 1
    with pytest.raises(DataFolderError):
        check_folder(tmp_path, "image")
    with pytest.raises(ValueError, match="unknown data kind"):
        check_folder(tmp_path, "audio")


# ------------------------------------------------------------------ fedssl check-data

def test_cli_usable_folder_prints_counts_only(tmp_path, capsys):
    _write(tmp_path, "notes.txt", SECRET + "\n\n" + SECRET + "\n")
    assert main(["check-data", str(tmp_path), "--task", "mlm"]) == 0
    out, err = capsys.readouterr()
    _assert_clean(out + err)
    assert "2 text records in 1 file" in out and "ok: usable by task 'mlm'" in out


def test_cli_data_problem_exits_1_with_kind(tmp_path, capsys):
    _write(tmp_path, "notes.txt", b"fine\n" + SECRET.encode() + b"\xff\n")
    assert main(["check-data", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    _assert_clean(out + err)
    assert err.startswith("fedssl check-data: not-utf8: notes.txt line 2:")
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_cli_unknown_task_exits_2(tmp_path, capsys):
    assert main(["check-data", str(tmp_path), "--task", "no-such-task"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'no-such-task'" in err and len(err.strip().splitlines()) == 1


def test_cli_missing_folder_exits_1(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "nope")]) == 1
    assert "fedssl check-data: missing-folder:" in capsys.readouterr().err


def test_cli_image_task_gives_the_nodes_own_verdict(tmp_path, capsys):
    """`check-data --task mae` says ok exactly when the node's loader accepts the folder: a
    folder of 64x64 RGB images loads as images, but the node (1 x 28 x 28) refuses it."""
    _png(tmp_path, "a.png", np.zeros((28, 28), np.uint8))
    assert main(["check-data", str(tmp_path), "--task", "mae"]) == 0
    out = capsys.readouterr().out
    assert "1 image in 1 file" in out and "ok: usable by task 'mae'" in out
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    _png(rgb, "big.png", np.zeros((64, 64, 3), np.uint8))
    assert main(["check-data", str(rgb), "--task", "mae"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedssl check-data: wrong-format: images are 3 channels x 64 x 64")
    _png(tmp_path, "b.png", np.zeros((5, 5, 3), np.uint8))
    assert main(["check-data", str(tmp_path), "--task", "mae"]) == 1
    assert "wrong-format: b.png" in capsys.readouterr().err
