"""One run per RUN_DIR: an OS lock that the ServerApp holds for the run's whole life.

Two federations writing one RUN_DIR interleave their rounds (metrics.jsonl once read
`[1,2,3,4,5,6,5,6]`) and make nodes pay for duplicated rounds. The ServerApp takes an
exclusive `flock` on `RUN_DIR/.lock` before it touches anything else and keeps it until its
process ends; the kernel releases it however that process ends (even SIGKILL), so a crashed
run never leaves a stale lock. The file names its holder (pid, host, start time) for the
message a second start gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from common.run_layout import LOCK_FILE

_held: list[IO[str]] = []  # open for the life of the process: closing it would release the lock


class RunDirBusy(RuntimeError):
    """Another live process holds RUN_DIR's lock; the message names it."""


def hold_run_dir(run_dir: Path) -> None:
    """Take RUN_DIR's lock for the rest of this process's life; RunDirBusy if it is held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        raise RunDirBusy(f"{run_dir} is in use by another run ({holder}); wait for it to end, "
                         "stop it, or use another RUN_DIR") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    handle.flush()
    _held.append(handle)


def check_run_dir_free(run_dir: Path) -> None:
    """RunDirBusy if a live run holds RUN_DIR now (a check, not a hold: nothing is kept)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir} is in use by another run ({_holder(handle)}); wait "
                             "for it to end, stop it, or use another RUN_DIR") from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        return "holder unknown"
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
