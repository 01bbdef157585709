"""`fedssl check-data DIR [--task TASK] [--set KEY=VALUE ...] [--deid [ENGINE]]`: will a data
folder load, for a node and for a simulation? Counts only, never record content (`--deid`: how
many identifiers of each type a node's de-identification would replace, in how many records).

Hospital IT runs this next to the data before starting a SuperNode with `data-dir=DIR`; it
loads the folder exactly as the node will (same loader, same limits, same run settings such as
`truncate-records`). Researchers run it before `fedssl simulate --set data=DIR`: it also
reports the labelled records and classes, how much of a typical record `max-length` keeps, and
whether the simulation's split would accept the folder with these settings (and why not).

Exit codes: 0 a node can use the folder (the simulation verdict is a separate line); 1 a data
problem (`fedssl check-data: <kind>: <message>` on stderr, then every over-long record's
position); 2 a usage problem (unknown task, bad setting).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.data_folders import DATA_KINDS, DataFolderError, FolderReport, load_text_folder
from common.data.deidentification import DEID_OFF, check_engine, deidentify
from common.data.image_folders import load_image_folder
from common.run_config import ConfigError, RunConfig, parse_overrides

PROG = "fedssl check-data"


def check_folder(data_dir: str | Path, data_kind: str, truncate: bool = False) -> FolderReport:
    """Load the folder as `data_kind` ("text" or "image") and return its report.

    Raises DataFolderError for any data problem, ValueError for an unknown `data_kind`.
    """
    if data_kind == "text":
        return load_text_folder(data_dir, truncate=truncate)[1]
    if data_kind == "image":
        return load_image_folder(data_dir)[1]
    raise ValueError(f"unknown data kind '{data_kind}'; known: {', '.join(DATA_KINDS)}")


def check_data_command(data_dir: str, task_name: str, settings: Sequence[str] = (),
                       deid: str | None = None) -> int:
    """Check `data_dir` for task `task_name` under the run `settings`; print counts; exit code.

    `deid`: also count what that de-identification engine would replace, per type (spans and
    records, never the text: see common/data/deidentification.py).
    """
    # Imported here: the task registry loads torch, and the other subcommands do not need it.
    from common.tasks import get_task

    folder = Path(data_dir).expanduser().resolve()
    try:
        config = RunConfig.from_mapping({"task": task_name, **parse_overrides(list(settings)),
                                         "data": str(folder)})
        task = get_task(config.task)
        if deid is not None:
            deid = check_engine(deid, "--deid")
            if task.data_kind != "text":
                raise ConfigError("--deid", f"task '{task.name}' reads images: "
                                  "de-identification applies to text records")
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        texts: list[str] = []
        if task.data_kind == "text":
            texts, report = load_text_folder(data_dir, truncate=config.truncate_records)
        else:
            report = check_folder(data_dir, task.data_kind)
        # Then the node's own loader, so that "ok" here means the node accepts the folder
        # (e.g. an image task also needs 1 x 28 x 28 images): one loader, one verdict.
        task.folder_tensors(config, folder)
    except DataFolderError as err:
        print(f"{PROG}: {err.kind}: {err}", file=sys.stderr)
        for line in err.location_lines():  # every over-long record, not only the first few
            print(line, file=sys.stderr)
        return 1
    print("\n".join(report.summary_lines()))
    print("\n".join(_length_lines(config, texts)))
    if deid is not None and deid != DEID_OFF:
        try:
            print("\n".join(deidentify(texts, deid)[1].lines()))
        except ConfigError as err:  # the engine's packages are missing
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
    print(f"{PROG}: ok: usable by task '{task.name}' ({task.data_kind} data)")
    print("\n".join(simulation_verdict(config, task.data_kind)))
    return 0


def _length_lines(config: RunConfig, texts: list[str]) -> list[str]:
    """Median record length with the run's tokenizer, and a warning if max-length cuts most."""
    from common.data.record_lengths import run_length_coverage

    coverage = run_length_coverage(config, texts) if texts else None
    if coverage is None:
        return []
    warning = coverage.warning()
    return [coverage.line(), *([warning] if warning else [])]


def simulation_verdict(config: RunConfig, data_kind: str) -> list[str]:
    """The folder's labels, and whether `fedssl simulate --set data=DIR` (with `config`'s
    settings) accepts it; if not, the refusal, which names the setting and the fix."""
    from common.data.run_splits import load_own_records, own_split_sizes
    from common.tasks import check_run_data

    head = f"fedssl simulate --set data={config.data}"
    try:
        own = load_own_records(config.data, data_kind, config.truncate_records)
    except DataFolderError as err:  # e.g. a bad `label` value, which a node ignores
        return [f"{head}: refused: {err.kind}: {err}"]
    labels = label_line(own.labels, len(own.label_names))
    try:
        check_run_data(config)  # the very check `fedssl simulate` runs before it starts
    except (ConfigError, DataFolderError) as err:
        kind = f"{err.kind}: " if isinstance(err, DataFolderError) else ""
        return [labels, f"{head}: refused: {kind}{err}"]
    test, labelled, clients = own_split_sizes(config, data_kind)
    server = (f"the server gets {test:,} test and {labelled:,} labelled records"
              if config.downstream else "pretraining only (downstream=false)")
    return [labels, f"{head}: accepted with these settings: {server}; {len(clients)} "
            f"clients hold {min(clients):,}-{max(clients):,} records each"]


def label_line(labels: np.ndarray, classes: int) -> str:
    """How many records carry a label and in how many classes (counts only)."""
    labelled = int(np.count_nonzero(labels >= 0))
    unlabelled = len(labels) - labelled
    return (f"labels: {labelled:,} labelled records in {classes:,} "
            f"class{'' if classes == 1 else 'es'}, {unlabelled:,} unlabelled "
            "(a simulation's server uses labels; a deployed node ignores them)")
