"""Stop a run's processes when the command that started them dies, however it dies.

`fedssl simulate` stops everything it started when it exits, on Ctrl-C or SIGTERM. SIGKILL
gives it no chance: Flower's SuperLink runs in its own session, so it and its ServerApp, Ray and
ClientApps used to keep the federation going (and a rerun then started a second one beside it).
So `fedssl simulate` starts this watchdog in a session of its own: it polls the command's pid
(and its start time, so a reused pid is not mistaken for it), and once the command is gone it
stops every process that carries the run's private FLWR_HOME in its environment (Flower's and
Ray's processes all inherit it), removes that folder, and exits. When the command ends
normally it stops the watchdog itself.

    python -m simulations.run_watchdog PARENT_PID PARENT_START FLWR_HOME
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

POLL_S = 0.5


def start_watchdog(flwr_home: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog for this process and the run whose FLWR_HOME is `flwr_home`."""
    me = psutil.Process()
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run_watchdog", str(me.pid),
         repr(me.create_time()), str(flwr_home)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a kill of the command's process group must not reach it
        cwd=str(Path(__file__).resolve().parent.parent),
    )


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1e-3
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def main(argv: list[str]) -> int:
    """Wait for the parent to die, then stop the run's processes and remove FLWR_HOME."""
    from server.deployment.process_tree import stop_process_tree

    parent, started, flwr_home = int(argv[0]), float(argv[1]), argv[2]
    while _alive(parent, started):
        time.sleep(POLL_S)
    stop_process_tree(None, marker=("FLWR_HOME", flwr_home), grace_s=5.0)
    shutil.rmtree(flwr_home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
