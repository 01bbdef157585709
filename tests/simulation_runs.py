"""Running `fedssl simulate` from tests, and proving it left no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
FLOWER_PROCESS_NAMES = ("flower-superlink", "flower-superexec", "flwr-serverapp",
                        "flwr-simulation", "flwr-clientapp", "raylet", "gcs_server")
# A tiny model and few records: the whole pipeline in about a minute.
TINY_RUN = {
    "max-records": 4000, "local-steps": 4, "batch-size": 32, "label-fraction": 0.05,
    "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
    "finetune-epochs": 2, "prune-recover-epochs": 1,
}


# Every process this test session starts inherits this marker, so "our" Flower processes are
# told apart from those of other test sessions on the same machine (never touch theirs).
MARKER_KEY = "FEDSSL_TEST_SESSION"
os.environ.setdefault(MARKER_KEY, f"pytest-{os.getpid()}")


def flower_processes() -> set[int]:
    """PIDs of every Flower/Ray process started by this test session."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if not any(name in cmdline for name in FLOWER_PROCESS_NAMES):
            continue
        try:
            if proc.environ().get(MARKER_KEY) == os.environ[MARKER_KEY]:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def simulate(
    run_dir: Path, settings: dict[str, Any], timeout: int = 900
) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run `fedssl simulate` to completion; kill (and return) anything it left running."""
    before = flower_processes()
    args = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )
    leftovers = flower_processes() - before
    for pid in leftovers:  # never leave processes behind, even when an assertion fails
        psutil.Process(pid).kill()
    return result, leftovers
