"""One run per RUN_DIR (server/run_lock.py): the lock names its holder, refuses a second run,
and dies with its holder's process however that ends."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from server.run_lock import RunDirBusy, check_run_dir_free, hold_run_dir


def _hold(run_dir, ready) -> None:
    hold_run_dir(run_dir)
    ready.set()
    signal.pause()  # until killed


def test_a_second_run_is_refused_while_the_first_lives_and_free_after_it_dies(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(tmp_path, ready))
    holder.start()
    try:
        assert ready.wait(30)
        for attempt in (check_run_dir_free, hold_run_dir):
            with pytest.raises(RunDirBusy) as err:
                attempt(tmp_path)
            assert f"pid {holder.pid}" in str(err.value) and str(tmp_path) in str(err.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup at all: the kernel drops the lock
        holder.join(30)
    check_run_dir_free(tmp_path)
    hold_run_dir(tmp_path)  # this process now holds it
    assert f'"pid": {os.getpid()}' in (tmp_path / ".lock").read_text()
