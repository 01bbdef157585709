"""Running `fedssl simulate` from tests, and proving it left no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
MARK = "FEDSSL_TEST_RUN"  # environment marker of the processes one test run started
FLOWER_PROCESS_NAMES = ("flower-superlink", "flower-superexec", "flwr-serverapp",
                        "flwr-simulation", "flwr-clientapp", "raylet", "gcs_server")
# A tiny model and few records: the whole pipeline in about a minute.
TINY_RUN = {
    "max-records": 4000, "local-steps": 4, "batch-size": 32, "label-fraction": 0.05,
    "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
    "finetune-epochs": 2, "prune-recover-epochs": 1,
}


# Every process this test session starts inherits this mark (Ray's daemons and Flower's
# detached processes too, which are not our descendants), so cleanup finds exactly ours and
# never touches Flower processes of another session running on the same machine.
SESSION_MARK = "FEDSSL_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)


def flower_processes() -> set[int]:
    """PIDs of the Flower/Ray processes started by this test session."""
    found = set()
    mark = os.environ[SESSION_MARK]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if not any(name in cmdline for name in FLOWER_PROCESS_NAMES):
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(SESSION_MARK) == mark:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def marked_processes(token: str) -> set[int]:
    """PIDs of every process whose environment carries `token` (see `marked_env`)."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == token:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def marked_env() -> tuple[dict[str, str], str]:
    """An environment whose every descendant process can be found again (Flower's detached
    ones and Ray's workers too: they inherit it), without touching anyone else's processes."""
    token = uuid.uuid4().hex
    return {**os.environ, MARK: token}, token


def simulate(
    run_dir: Path, settings: dict[str, Any], timeout: int = 900,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run `fedssl simulate` to completion; kill (and return) anything it left running.

    Only processes this run started count (found by an environment marker): other Flower
    runs on the same machine are neither reported nor killed.
    """
    env, token = marked_env()
    args = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    args += extra_args or []
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, env=env,
    )
    leftovers = marked_processes(token)
    for pid in leftovers:  # never leave processes behind, even when an assertion fails
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return result, leftovers
