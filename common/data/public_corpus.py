"""The run's public corpus: text that costs no privacy, for the warm start and public negatives.

Two things read public text: the server's warm start (`warm-start-steps`, server/public_warm_start.py)
and the contrastive task's negatives (common/tasks/contrastive.py). Setting `public-corpus`:

* `""`: the shipped ICD-10-CM non-leaf headings (`common.data.icd10_corpus.load_public_headings`,
  disjoint from the demo's private records);
* a `.txt` file: one public text per line (UTF-8; blank lines skipped);
* a folder: `.txt`, `.jsonl` and `.csv` files read by the data-folder rules
  (common/data/data_folders.py: one record per line / a `text` field / a `text` column).

The corpus is public *by declaration*: fedssl cannot tell public text from private, so whoever
names it vouches that it holds no record of the federation (docs/public-encoders.md). Its SHA-256
(over the texts joined by newlines, as for the shipped headings) enters the public-inputs hash
that server and nodes compare each round, so a node whose own copy differs refuses the run.
Errors are ConfigError("public-corpus", ...) naming the file, never a text.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from common.config_error import ConfigError
from common.data.data_folders import (
    MAX_FILE_BYTES,
    MAX_RECORD_CHARS,
    DataFolderError,
    load_text_folder,
)

SETTING = "public-corpus"
SHIPPED_NAME = "ICD-10-CM non-leaf headings (simple-icd-10-cm package)"
FILE_SUFFIX = ".txt"


@dataclass(frozen=True)
class PublicCorpus:
    """Public texts in a fixed order, what they are, and their SHA-256."""

    name: str
    texts: tuple[str, ...]
    sha256: str


def load_public_corpus(setting: str) -> PublicCorpus:
    """The corpus `public-corpus` names (cached while its files are unchanged)."""
    if not setting:
        return _shipped()
    path = Path(setting).expanduser().resolve()
    return _load(str(path), _fingerprint(path))


def public_corpus_sha256(setting: str) -> str:
    """SHA-256 of the corpus `public-corpus` names."""
    return load_public_corpus(setting).sha256


def corpus_problem(setting: str) -> str | None:
    """Why `setting` cannot name a corpus (a cheap check for RunConfig), or None."""
    if not setting:
        return None
    path = Path(setting).expanduser()
    if path.is_dir():
        return None
    if not path.exists():
        return f"not found: {setting} (\"\" = the shipped ICD-10-CM headings)"
    if path.suffix.lower() != FILE_SUFFIX:
        return (f"{setting}: a single file must be a {FILE_SUFFIX} file (one text per line); "
                "put .jsonl or .csv files in a folder and name the folder")
    return None


def _digest(texts: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _shipped() -> PublicCorpus:
    # Imported here: the headings' package parses its XML on import (~3 s).
    from common.data.icd10_corpus import load_public_headings

    texts = tuple(load_public_headings())
    return PublicCorpus(SHIPPED_NAME, texts, _digest(texts))


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times: a changed file is read again, not served stale."""
    if path.is_file():
        info = path.stat()
        return (("", info.st_size, info.st_mtime_ns),)
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            try:
                info = (Path(root) / name).stat()
            except OSError:
                continue  # the loader reports it, naming the file
            found.append((os.path.join(root, name), info.st_size, info.st_mtime_ns))
    return tuple(found)


@functools.lru_cache(maxsize=4)
def _load(path: str, fingerprint: tuple[tuple[str, int, int], ...]) -> PublicCorpus:
    folder = Path(path)
    if folder.is_dir():
        try:
            texts, report = load_text_folder(folder)
        except DataFolderError as err:
            raise ConfigError(SETTING, f"{path}: {err}") from None
        name = f"{path} ({len(report.files)} file(s))"
    elif folder.is_file() and folder.suffix.lower() == FILE_SUFFIX:
        texts, name = _text_file(folder), path
    else:
        raise ConfigError(SETTING, corpus_problem(path) or f"cannot read {path}")
    return PublicCorpus(name, tuple(texts), _digest(tuple(texts)))


def _text_file(path: Path) -> list[str]:
    """One text per non-blank line of a UTF-8 file (a leading byte-order mark is accepted)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(SETTING, f"{path}: {size:,} bytes, more than the limit of "
                          f"{MAX_FILE_BYTES:,}; split it into a folder of smaller files")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise ConfigError(SETTING, f"{path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(SETTING, f"{path}: not valid UTF-8; save it as UTF-8") from None
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if len(line) > MAX_RECORD_CHARS:
            raise ConfigError(SETTING, f"{path} line {number}: {len(line):,} characters, more "
                              f"than the limit of {MAX_RECORD_CHARS:,} per text")
        if line:
            texts.append(line)
    if not texts:
        raise ConfigError(SETTING, f"{path} holds no text (only blank lines)")
    return texts
