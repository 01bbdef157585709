"""`fedssl check-data DIR --task TASK`: will a node's data folder load? Counts only, no content.

Hospital IT runs this next to the data before starting a SuperNode with `data-dir=DIR`; it
loads the folder exactly as the node will (same loader, same limits).

Exit codes: 0 the folder is usable; 1 a data problem (`fedssl check-data: <kind>: <message>`
on stderr); 2 a usage problem (unknown task).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.data.data_folders import DATA_KINDS, DataFolderError, FolderReport, load_text_folder
from common.data.image_folders import load_image_folder
from common.run_config import ConfigError, RunConfig

PROG = "fedssl check-data"



def check_folder(data_dir: str | Path, data_kind: str) -> FolderReport:
    """Load the folder as `data_kind` ("text" or "image") and return its report.

    Raises DataFolderError for any data problem, ValueError for an unknown `data_kind`.
    """
    if data_kind == "text":
        return load_text_folder(data_dir)[1]
    if data_kind == "image":
        return load_image_folder(data_dir)[1]
    raise ValueError(f"unknown data kind '{data_kind}'; known: {', '.join(DATA_KINDS)}")


def check_data_command(data_dir: str, task_name: str) -> int:
    """Check `data_dir` against the data kind of task `task_name`; print counts; exit code."""
    # Imported here: the task registry loads torch, and the other subcommands do not need it.
    from common.tasks import get_task

    try:
        task = get_task(task_name)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        report = check_folder(data_dir, task.data_kind)
        # Then the node's own loader, so that "ok" here means the node accepts the folder
        # (e.g. an image task also needs 1 x 28 x 28 images): one loader, one verdict.
        task.folder_tensors(RunConfig(task=task.name), Path(data_dir).expanduser().resolve())
    except DataFolderError as err:
        print(f"{PROG}: {err.kind}: {err}", file=sys.stderr)
        return 1
    print("\n".join(report.summary_lines()))
    print(f"{PROG}: ok: usable by task '{task.name}' ({task.data_kind} data)")
    return 0
