"""A deployed node's private data folder: find its files, load its records, explain problems.

Hospital IT points a SuperNode at a folder (node config `data-dir=...`). This module turns that
folder into records, or into one `DataFolderError` that says what to fix. Error messages and
reports name files, line/row numbers and counts, never the content of a record: they end up in
terminals, logs and support tickets, where a record must not.

Folder rules (both kinds):
* the folder is read recursively; files are taken in sorted order of their path relative to the
  folder (POSIX separators), records in file order, so every load is deterministic;
* names starting with "." (files and folders: `.DS_Store`, `.git/`) are ignored;
* extensions are matched case-insensitively; any other file is a "wrong-format" error, so a stray
  export or a README never silently becomes training data, nor is silently skipped.

Text formats (`load_text_folder`), all UTF-8 (a leading byte-order mark is accepted):
* `.txt`: one record per line;
* `.jsonl`: one JSON object per line with a string field `text` (other fields, such as
  `label`, are ignored);
* `.csv`: a header row with a `text` column (other columns, such as `label` or `client`, are
  ignored); quoted fields may span lines.
Records are stripped of surrounding whitespace; blank lines (and blank `text` values) are
skipped and counted. A record longer than MAX_RECORD_CHARS refuses the folder, naming every
such record (file and line, never content), unless the loader is asked to truncate (the run
setting `truncate-records`). Image formats are described in `common/data/image_folders.py`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A clinical note is a few thousand characters; a "record" far beyond this is almost always a
# whole export that lost its line breaks, which would train on one giant truncated sequence.
MAX_RECORD_CHARS = 20_000
TEXT_EXTENSIONS = (".txt", ".jsonl", ".csv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".npy")
DATA_KINDS = ("text", "image")
ERROR_KINDS = ("missing-folder", "not-a-folder", "no-records", "unreadable", "not-utf8",
               "blank-only", "oversize-record", "oversize-file", "oversize-folder",
               "wrong-format")
OVERSIZE_SHOWN = 10  # record locations named in an oversize-record message (check-data: all)
# One data file is read whole into memory (as the node trains on it): bound it, so that a
# stray multi-GB file (or a link to one) fails with a message instead of exhausting memory.
MAX_FILE_BYTES = 512 * 2**20
# The node holds every record of its folder in memory (then their tokens): bound the folder's
# total too, so that many files each under the per-file limit fail with a message, not OOM.
MAX_FOLDER_BYTES = 8 * 2**30
SUMMARY_FILES_SHOWN = 20  # a folder of 10,000 images should not print 10,000 lines


class DataFolderError(ValueError):
    """The data folder cannot be used; `kind` is one of ERROR_KINDS, the message names the file.

    The message never contains record content (not even a snippet). `locations` lists every
    offending record as (file, "line N" or "row N (line L)") when there can be many (oversize
    records); the message names the first few.
    """

    def __init__(self, kind: str, message: str,
                 locations: tuple[tuple[str, str], ...] = ()) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown data folder error kind '{kind}'")
        super().__init__(message)
        self.kind = kind
        self.locations = locations

    def location_lines(self) -> list[str]:
        """Every offending record, one line per file (counts and positions only)."""
        by_file: dict[str, list[str]] = {}
        for name, where in self.locations:
            by_file.setdefault(name, []).append(where)
        return [f"  {name}: {_plural(len(wheres), 'record')}: {', '.join(wheres)}"
                for name, wheres in by_file.items()]


@dataclass(frozen=True)
class FileCount:
    """How many records one file gave, and how many blank lines were skipped in it."""

    name: str  # relative to the data folder, POSIX separators
    records: int
    blank: int = 0


@dataclass(frozen=True)
class FolderReport:
    """What a data folder holds, in counts only (safe to print and log)."""

    kind: str  # "text" or "image"
    folder: str
    files: tuple[FileCount, ...]
    shape: tuple[int, int, int] | None = None  # images: (C, H, W) of every record
    skipped: int = 0  # entries that are not regular files (FIFOs, devices, links to them)
    truncated: int = 0  # text records cut to the record limit (truncate-records)
    max_record_chars: int = MAX_RECORD_CHARS

    @property
    def total_records(self) -> int:
        """Records over all files."""
        return sum(f.records for f in self.files)

    @property
    def total_blank(self) -> int:
        """Blank lines skipped over all files."""
        return sum(f.blank for f in self.files)

    def summary_lines(self) -> list[str]:
        """Human-readable lines: totals, then one line per file (counts only, never content)."""
        what = "text record" if self.kind == "text" else "image"
        head = (f"{self.folder}: {_plural(self.total_records, what)} in "
                f"{_plural(len(self.files), 'file')}")
        if self.kind == "text":
            head += f" ({_plural(self.total_blank, 'blank line')} skipped)"
        lines = [head]
        if self.shape is not None:
            c, h, w = self.shape
            lines.append(f"  image shape: {_plural(c, 'channel')} x {h} x {w} (C x H x W)")
        for count in self.files[:SUMMARY_FILES_SHOWN]:
            line = f"  {count.name}: {_plural(count.records, 'record')}"
            if self.kind == "text":
                line += f", {count.blank:,} blank"
            lines.append(line)
        if len(self.files) > SUMMARY_FILES_SHOWN:
            lines.append(f"  ... and {len(self.files) - SUMMARY_FILES_SHOWN:,} more files")
        if self.skipped:
            what = "entry" if self.skipped == 1 else "entries"
            lines.append(f"  {self.skipped:,} {what} skipped: not regular files (FIFOs, "
                         "devices, sockets, or links to them)")
        if self.truncated:
            lines.append(f"  {_plural(self.truncated, 'record')} longer than "
                         f"{self.max_record_chars:,} characters cut to that length "
                         "(truncate-records)")
        return lines


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def data_files(data_dir: str | Path, extensions: tuple[str, ...]
               ) -> tuple[Path, list[str], int]:
    """The folder, its data files (relative POSIX names, sorted) and how many entries were
    skipped for not being regular files (a FIFO would hang a read, a link to /dev/zero never
    end it); checks every extension, every file's size (at most MAX_FILE_BYTES) and their
    total (at most MAX_FOLDER_BYTES)."""
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise DataFolderError("missing-folder", f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise DataFolderError("not-a-folder", f"data folder {folder} is a file, not a folder")
    try:
        visible = sorted(_visible_files(folder))
    except OSError as err:
        raise DataFolderError("unreadable", f"cannot list {err.filename or folder}: "
                              f"{err.strerror or type(err).__name__}") from None
    names, sizes = [], {}
    for name in visible:
        try:
            info = (folder / name).stat()  # follows links: what a read would open
        except OSError as err:  # e.g. a dangling link: the data it names is missing
            raise DataFolderError("unreadable", f"{name}: cannot be read "
                                  f"({err.strerror or type(err).__name__})") from None
        if stat.S_ISREG(info.st_mode):
            names.append(name)
            sizes[name] = info.st_size
    skipped = len(visible) - len(names)
    wrong = [n for n in names if Path(n).suffix.lower() not in extensions]
    if wrong:
        others = f" (and {len(wrong) - 1:,} more)" if len(wrong) > 1 else ""
        raise DataFolderError(
            "wrong-format", f"{wrong[0]}{others}: unsupported file type; the folder may hold "
            f"only {', '.join(extensions)} files (names starting with '.' are ignored)")
    big = [n for n in names if sizes[n] > MAX_FILE_BYTES]
    if big:
        raise DataFolderError("oversize-file", f"{big[0]}: {sizes[big[0]]:,} bytes, more than "
                              f"the limit of {MAX_FILE_BYTES:,} per file; split it into "
                              "smaller files")
    total = sum(sizes.values())
    if total > MAX_FOLDER_BYTES:
        raise DataFolderError("oversize-folder", f"data folder {folder}: {total:,} bytes in "
                              f"{_plural(len(names), 'file')}, more than the limit of "
                              f"{MAX_FOLDER_BYTES:,} ({MAX_FOLDER_BYTES / 2**30:g} GiB) per "
                              "folder; point the node at a folder with fewer records")
    return folder, names, skipped


def _visible_files(folder: Path) -> Iterator[str]:
    def fail(err: OSError) -> None:
        raise err

    # os.walk does not follow symlinked folders (no cycles) and reports listing errors via onerror.
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield (Path(root) / name).relative_to(folder).as_posix()


def load_text_folder(data_dir: str | Path, max_record_chars: int = MAX_RECORD_CHARS,
                     truncate: bool = False) -> tuple[list[str], FolderReport]:
    """Every text record of the folder, in deterministic order, with the folder's report.

    Raises DataFolderError naming the file (and line or row) of the first problem, or every
    record longer than `max_record_chars` (unless `truncate`: then they are cut to it).
    """
    records, _, report = load_text_records(data_dir, (), max_record_chars, truncate)
    return records, report


def load_text_records(
    data_dir: str | Path, fields: tuple[str, ...], max_record_chars: int = MAX_RECORD_CHARS,
    truncate: bool = False,
) -> tuple[list[str], list[dict[str, str]], FolderReport]:
    """Like `load_text_folder`, plus each record's optional `fields` (e.g. "label", "client").

    A field comes from the .jsonl key or .csv column of that name (a string or a number; a
    missing, null or blank value is left out of the record's dict); .txt records have none.
    Raises DataFolderError("wrong-format") for a field value of another type.
    """
    folder, names, skipped = data_files(data_dir, TEXT_EXTENSIONS)
    if not names:
        raise DataFolderError("no-records", f"data folder {folder} has no "
                              f"{', '.join(TEXT_EXTENSIONS)} files")
    records: list[str] = []
    extras: list[dict[str, str]] = []
    counts: list[FileCount] = []
    oversize: list[tuple[str, str, int]] = []  # (file, where, characters)
    for name in names:
        text = _read_utf8(folder / name, name)
        suffix = Path(name).suffix.lower()
        if suffix == ".csv":
            found, blank = _csv_records(text, name, fields)
        else:
            found, blank = _line_records(text, name, suffix == ".jsonl", fields)
        # Every offender, not only the first: one fix (or truncate-records) for all of them.
        oversize += [(name, where, len(r)) for where, r, _ in found if len(r) > max_record_chars]
        records.extend(record[:max_record_chars] for _, record, _ in found)
        extras.extend(extra for _, _, extra in found)
        counts.append(FileCount(name, len(found), blank))
    if oversize and not truncate:
        raise _oversize_error(oversize, max_record_chars)
    report = FolderReport("text", str(folder), tuple(counts), skipped=skipped,
                          truncated=len(oversize), max_record_chars=max_record_chars)
    if not records:
        raise DataFolderError(
            "blank-only", f"data folder {folder}: its {len(names)} file(s) hold only blank "
            "lines or empty values, no records")
    return records, extras, report


def _oversize_error(oversize: list[tuple[str, str, int]], limit: int) -> DataFolderError:
    """One error naming how many records are too long and where (the first few; all in
    `locations`), with both fixes."""
    shown = "; ".join(f"{name} {where} ({length:,})"
                      for name, where, length in oversize[:OVERSIZE_SHOWN])
    more = len(oversize) - OVERSIZE_SHOWN
    shown += f"; and {more:,} more (fedssl check-data lists all)" if more > 0 else ""
    them = "it" if len(oversize) == 1 else "them"
    return DataFolderError(
        "oversize-record",
        f"{_plural(len(oversize), 'record')} longer than the limit of {limit:,} characters: "
        f"{shown}; split {them} into shorter records (a record this long is usually an export "
        f"that lost its line breaks), or set truncate-records=true to cut {them} to {limit:,} "
        "characters", tuple((name, where) for name, where, _ in oversize))


def _read_utf8(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFolderError("unreadable", f"{name}: cannot be read "
                              f"({err.strerror or type(err).__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # Position only: the offending bytes belong to a record.
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataFolderError("not-utf8", f"{name} line {line}: not valid UTF-8 at byte column "
                              f"{column}; save the file as UTF-8") from None


Found = list[tuple[str, str, dict[str, str]]]  # (where, record, optional fields) per record


def _line_records(text: str, name: str, as_json: bool, fields: tuple[str, ...] = ()
                  ) -> tuple[Found, int]:
    """(("line N", record, fields) triples, blank lines skipped) of a .txt or .jsonl file."""
    lines = text.split("\n")  # not splitlines(): \x0c or U+2028 inside a record do not split it
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is not a blank line
    found: Found = []
    blank = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        record, extra = _json_text(line, name, number, fields) if as_json \
            else (line.strip(), {})
        if record:
            found.append((f"line {number}", record, extra))
        else:
            blank += 1
    return found, blank


def _json_text(line: str, name: str, number: int, fields: tuple[str, ...] = ()
               ) -> tuple[str, dict[str, str]]:
    where = f"{name} line {number}"
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise DataFolderError("wrong-format", f"{where}: not a valid JSON object "
                              "(.jsonl needs one object per line)") from None
    if not isinstance(value, dict):
        raise DataFolderError("wrong-format", f"{where}: a JSON {type(value).__name__}, "
                              "not an object with a \"text\" field")
    if "text" not in value:
        raise DataFolderError("wrong-format", f"{where}: object has no \"text\" field")
    if not isinstance(value["text"], str):
        kind = "null" if value["text"] is None else type(value["text"]).__name__
        raise DataFolderError("wrong-format", f"{where}: \"text\" is a {kind}, not a string")
    extra = {}
    for field in fields:
        found = value.get(field)
        if found is None or isinstance(found, str) and not found.strip():
            continue
        if isinstance(found, bool) or not isinstance(found, (str, int, float)):
            raise DataFolderError("wrong-format", f"{where}: \"{field}\" is a "
                                  f"{type(found).__name__}, not a string or a number")
        extra[field] = found.strip() if isinstance(found, str) else f"{found:g}"
    return value["text"].strip(), extra


def _csv_records(text: str, name: str, fields: tuple[str, ...] = ()) -> tuple[Found, int]:
    """(("row N (line L)", record, fields) triples, blank rows skipped) of a .csv file."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # csv's own field limit (128 KiB) would stop at one long record before the record limit
    # can name them all or truncate them; a field cannot outgrow its file (MAX_FILE_BYTES).
    csv_limit = csv.field_size_limit(MAX_FILE_BYTES)
    found: Found = []
    blank = 0
    row_number = 0
    try:
        header = next(reader, None)
        if header is None:
            return [], 0  # an empty file: nothing to count
        columns = [c.strip().lower() for c in header]
        if columns.count("text") != 1:
            problem = "no" if "text" not in columns else "more than one"
            raise DataFolderError("wrong-format", f"{name}: header row (line 1) has {problem} "
                                  "\"text\" column")
        text_column = columns.index("text")
        # The first column of each optional field's name (a duplicate is not an error: the
        # deployment loader ignores every column but `text`).
        field_columns = {f: columns.index(f) for f in fields if f in columns}
        for row_number, row in enumerate(reader, start=1):
            where = f"row {row_number} (line {reader.line_num})"
            if not row or not any(field.strip() for field in row):
                blank += 1
                continue
            if len(row) != len(header):
                raise DataFolderError(
                    "wrong-format", f"{name} {where}: {len(row)} fields, but the header has "
                    f"{len(header)} (an unquoted comma or quote?)")
            record = row[text_column].strip()
            if record:
                extra = {f: row[i].strip() for f, i in field_columns.items() if row[i].strip()}
                found.append((where, record, extra))
            else:
                blank += 1
    except csv.Error as err:
        # csv's messages are fixed strings (plus the field size limit), never field content.
        where = f"{name} row {row_number + 1} (line {reader.line_num})"
        if "field larger than field limit" in str(err):
            raise DataFolderError("oversize-record", f"{where}: a field is longer than "
                                  f"{csv.field_size_limit():,} characters") from None
        raise DataFolderError("wrong-format", f"{where}: not valid CSV ({err})") from None
    finally:
        csv.field_size_limit(csv_limit)
    return found, blank
