"""Stop a process, everything it started, and every process marked with a run's environment.

Flower detaches some processes into sessions of their own (the SuperLink, Ray's raylet), so
descendants alone miss them: they are also found by an environment variable they inherited.
"""

from __future__ import annotations

import os

import psutil


def stop_process_tree(
    pid: int | None, marker: tuple[str, str] | None = None, grace_s: float = 10.0
) -> list[int]:
    """Stop `pid` (if any), all its descendants, and any process whose environment has
    `marker`. SIGTERM first, SIGKILL after `grace_s`. Returns the PIDs that were signalled.
    """
    targets: dict[int, psutil.Process] = {}
    try:
        if pid is not None:
            root = psutil.Process(pid)
            targets[root.pid] = root
            targets.update({p.pid: p for p in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    if marker is not None:
        for proc in _processes_with_env(*marker):
            targets[proc.pid] = proc
            # Their children too: Ray starts some agents with an environment of their own,
            # and would orphan them (alive, under init) when their raylet is stopped.
            try:
                targets.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    targets.pop(os.getpid(), None)
    for proc in targets.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(targets.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)
    return sorted(targets)


def _processes_with_env(key: str, value: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key) == value:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found
