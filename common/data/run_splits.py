"""A user's own dataset in simulation (`data=PATH`), split across simulated clients like the demo.

The folder uses the deployment formats (`common/data/data_folders.py`, `common/data/image_folders.py`, same
loaders, same `DataFolderError`s as `fedssl check-data`), plus two optional per-record fields:

* `label`: text: the `.jsonl` key or `.csv` column `label` (a string or a number); images: the
  name of the record's top-level subfolder (`DIR/<label>/x.png`, `DIR/<label>/batch.npy`).
  Records without a label (`.txt` lines, blank values, images directly in DIR) only join the
  clients' unlabelled pool; the server's labelled and test splits come from labelled records
  (a folder without any is fine for a pretraining-only run, `downstream=false`).
* `client`: text only, the `.jsonl` key or `.csv` column `client`: with `partition=column`,
  one simulated client per distinct value (a natural split, e.g. per hospital).

Every process of a run (the `fedssl simulate` edge check, the ServerApp, each simulated
ClientApp) computes the same seeded plan from the same folder; it is cached per process.
Public inputs are never derived from these records: the tokenizer is the shipped vocabulary
or `tokenizer=PATH` (one trained on these records would leak rare tokens outside any DP guarantee).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from common.data.data_folders import load_text_records
from common.data.demo_images import ImageSplits, demo_image_splits, split_images
from common.data.image_folders import load_image_folder
from common.data.partitioning import SplitSettings, plan_splits
from common.run_config import ConfigError, RunConfig

if TYPE_CHECKING:
    from common.data.demo_text import TextSplits

TEXT_FIELDS = ("label", "client")


@dataclass(frozen=True, eq=False)
class OwnRecords:
    """A user's records with integer label and client codes (-1: none)."""

    records: list[str] | np.ndarray  # texts, or float32 images [N, C, H, W]
    labels: np.ndarray  # int64, -1 = unlabelled
    label_names: list[str]  # code -> the label as written in the data
    groups: np.ndarray | None  # int64 client codes (-1 = none); None when no record has one

    @property
    def labelled(self) -> int:
        """How many records carry a label."""
        return int(np.count_nonzero(self.labels >= 0))


def load_own_records(data_dir: str | Path, data_kind: str, truncate: bool = False
                     ) -> OwnRecords:
    """The folder's records with their optional label/client fields (DataFolderError if bad);
    `truncate`: cut over-long text records instead of refusing them (`truncate-records`)."""
    if data_kind == "text":
        texts, fields, _ = load_text_records(data_dir, TEXT_FIELDS, truncate=truncate)
        labels, names = _codes([f.get("label") for f in fields])
        has_client = any("client" in f for f in fields)
        groups = _codes([f.get("client") for f in fields])[0] if has_client else None
        return OwnRecords(texts, labels, names, groups)
    images, report = load_image_folder(data_dir)
    per_record: list[str | None] = []
    for count in report.files:
        parts = PurePosixPath(count.name).parts
        per_record.extend([parts[0] if len(parts) > 1 else None] * count.records)
    labels, names = _codes(per_record)
    return OwnRecords(images, labels, names, None)


def _codes(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes of string values (None -> -1), in a stable order: numeric if all are."""
    # Sorted as strings first: set order differs between processes (hash seeds), and the
    # server and every client must give each label the same code, ties ("1", "1.0") included.
    names = sorted({v for v in values if v is not None})
    try:
        names = sorted(names, key=float)
    except ValueError:
        pass
    index = {name: code for code, name in enumerate(names)}
    codes = np.array([-1 if v is None else index[v] for v in values], dtype=np.int64)
    return codes, names


def text_splits(config: RunConfig) -> TextSplits:
    """The run's text splits: the user's `data` folder, or the embedded demo corpus."""
    if not config.data:
        from common.data.demo_text import demo_splits  # the ICD-10 corpus loads only when used

        return demo_splits(config)
    return _own_text_splits(_absolute(config.data), SplitSettings.from_config(config),
                            config.truncate_records)


def image_splits(config: RunConfig, dataset: str) -> ImageSplits:
    """The run's image splits: the user's `data` folder, or the shipped `dataset`."""
    if not config.data:
        return demo_image_splits(config, dataset)
    return _own_image_splits(_absolute(config.data), SplitSettings.from_config(config))


def _absolute(data: str) -> str:
    return str(Path(data).expanduser().resolve())


@functools.lru_cache(maxsize=4)
def _own_text_splits(data_dir: str, settings: SplitSettings, truncate: bool) -> TextSplits:
    from common.data.demo_text import TextSplits

    own = _checked(load_own_records(data_dir, "text", truncate), data_dir, "text", settings)
    plan = plan_splits(own.labels, settings, own.groups)
    texts = np.array(own.records, dtype=object)
    return TextSplits(
        label_names=own.label_names,
        test_texts=texts[plan.test].tolist(),
        test_labels=own.labels[plan.test],
        labeled_texts=texts[plan.labeled].tolist(),
        labeled_labels=own.labels[plan.labeled],
        client_texts=[texts[p].tolist() for p in plan.clients],
    )


@functools.lru_cache(maxsize=4)
def _own_image_splits(data_dir: str, settings: SplitSettings) -> ImageSplits:
    own = _checked(load_own_records(data_dir, "image"), data_dir, "image", settings)
    return split_images(np.asarray(own.records), own.labels, settings, own.label_names)


def _checked(own: OwnRecords, data_dir: str, data_kind: str, settings: SplitSettings
             ) -> OwnRecords:
    """ConfigError when the records cannot give what the run needs."""
    if own.labelled == 0 and settings.downstream:
        raise ConfigError("data", f"{data_dir} has no labelled records: the server's "
                          "fine-tuning and test splits need some (" + _LABEL_HOWTO[data_kind]
                          + "), or set downstream=false to pretrain only")
    if settings.partition == "column" and own.groups is None:
        raise ConfigError("partition", "'column' needs a `client` value per record (a .jsonl "
                          "key or .csv column `client`; text data only)")
    return own


_LABEL_HOWTO = {
    "text": "add a `label` key to .jsonl records or a `label` column to .csv files",
    "image": "put labelled images in subfolders named by their label, DIR/<label>/...",
}


def own_split_sizes(config: RunConfig, data_kind: str) -> tuple[int, int, list[int]]:
    """(test, server-labelled, per-client) record counts of the run's split of its own `data`
    (the cached plan: build it first with `check_run_data`)."""
    settings, data_dir = SplitSettings.from_config(config), _absolute(config.data)
    if data_kind == "text":
        text = _own_text_splits(data_dir, settings, config.truncate_records)
        return len(text.test_texts), len(text.labeled_texts), [len(c) for c in text.client_texts]
    images = _own_image_splits(data_dir, settings)
    return (len(images.test_labels), len(images.labeled_labels),
            [len(c) for c in images.client_images])
