"""Real Flower simulations of the user-facing scale features: a preset on the user's own data
(with progress lines), and Ctrl-C mid-run: exit 130, no process left, the run continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from simulation_runs import (
    ROOT,
    TINY_RUN,
    marked_env,
    marked_processes,
    simulate,
    write_text_folder,
)

from common.data.run_splits import text_splits
from common.run_config import RunConfig
from server.run_checkpoint import find_checkpoint

# Slow tier (`make test-slow`): a 1000-node preset and a Ctrl-C mid-run: ~3 min.
pytestmark = pytest.mark.slow

TINY_MODEL = {k: v for k, v in TINY_RUN.items() if k not in ("max-records", "label-fraction")}


def test_preset_on_own_data_with_natural_partition_and_progress(tmp_path):
    data = write_text_folder(tmp_path / "data", records=240, sites=4, unlabelled_txt=0)
    run_dir = tmp_path / "run"
    settings = {**TINY_MODEL, "data": data, "num-clients": 4, "partition": "column",
                "num-rounds": 2, "label-fraction": 0.2}
    args = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    result, leftovers = simulate(run_dir, {}, extra_args=["--preset", "hospitals", *args])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers, f"processes left running: {leftovers}"
    out = result.stdout
    assert f"on data {data.resolve()}" in out
    # Progress as replies arrive: clients done, elapsed, ETA (known after round 1).
    assert "[fedssl] round 1/2 | clients done 4/4 | elapsed " in out
    assert "[fedssl] round 2/2 | clients done 4/4 | elapsed " in out
    assert "| ETA 0s" in out.split("[fedssl] round 2/2 | clients done 4/4")[1].splitlines()[0]
    assert "[fedssl] round 2/2 | clients 4/4" in out
    config = json.loads((run_dir / "config.json").read_text())
    # The preset's settings stay where --set did not override them.
    assert config["dirichlet-alpha"] == 0.3 and config["fraction-train"] == 1.0
    assert config["data"] == str(data.resolve()) and config["partition"] == "column"
    # Server and clients used the split this process computes for the same settings.
    splits = text_splits(RunConfig.from_mapping(config))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels_used"] == len(splits.labeled_texts) > 0
    assert summary["clients"] == 4
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    examples = {c["partition-id"]: c["num-examples"] for c in rounds[0]["clients"]}
    assert examples == {pid: len(texts) for pid, texts in enumerate(splits.client_texts)}


def _started_by(pid: int, token: str) -> set[int]:
    """Every process `pid` started: its descendants, and those Flower detached into new
    sessions (found by the environment marker they inherited)."""
    return {c.pid for c in psutil.Process(pid).children(recursive=True)} \
        | (marked_processes(token) - {pid})


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


INTERRUPTED = {**TINY_RUN, "num-clients": 2, "num-rounds": 4, "local-steps": 12,
               "max-records": 2000}


def _in_round_two(run_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`fedssl simulate` with INTERRUPTED settings, in its own process group (as a terminal's
    foreground job), once round 1 is committed; and its environment marker."""
    command = [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir),
               *[a for k, v in INTERRUPTED.items() for a in ("--set", f"{k}={v}")]]
    env, token = marked_env()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, start_new_session=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("[fedssl] round 1/4 | clients 2/2"):
            return process, token
    process.kill()
    pytest.fail("the simulation never finished round 1")


def test_ctrl_c_mid_run_stops_everything_and_the_run_continues(tmp_path):
    run_dir = tmp_path / "run"
    process, token = _in_round_two(run_dir)
    started: set[int] = set()
    try:
        started = _started_by(process.pid, token)
        names = " ".join(_cmdline(p) for p in started)
        for expected in ("flower-superlink", "flwr run", "flwr-simulation", "raylet"):
            assert expected in names, f"{expected} not among {names}"
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _alive(started | marked_processes(token)):  # even when a check fails
            psutil.Process(pid).kill()
    assert process.returncode == 130, rest
    assert "fedssl: interrupted; all processes stopped" in rest
    assert "Traceback" not in rest
    time.sleep(1.0)
    assert not _alive(started), f"still running after Ctrl-C: {_alive(started)}"
    assert not _alive(marked_processes(token))

    # RUN_DIR is consistent: its checkpoint is a committed round with a matching model.
    config = RunConfig.from_mapping({**RunConfig().to_mapping(),
                                     **{k: str(v) for k, v in INTERRUPTED.items()},
                                     "run-dir": str(run_dir)})
    checkpoint = find_checkpoint(run_dir, config)
    assert checkpoint is not None and 1 <= checkpoint.round <= 4
    assert f"holds rounds 1-{checkpoint.round} of 4" in rest
    checkpoint.load_model()  # the file matches its recorded SHA-256
    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[: checkpoint.round] == list(range(1, checkpoint.round + 1))

    # The same command continues after the committed round and finishes the run.
    result, leftovers = simulate(run_dir, INTERRUPTED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not leftovers, f"processes left running: {leftovers}"
    assert f"holds this run up to round {checkpoint.round}/4; continuing it" in result.stdout
    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert Path(run_dir / "checkpoint.json").is_file()


def test_sigkill_of_the_whole_command_leaves_nothing_and_the_rerun_resumes(tmp_path):
    """SIGKILL of `fedssl simulate`'s process group in round 2 of 4 (issue "Hardening" §2):
    it used to leave 12 of 14 processes running a federation on, and a rerun started a second
    federation on the same RUN_DIR (rounds [1..6, 5, 6], nodes paying twice). Now the run's
    watchdog stops everything within seconds, and the rerun continues after the last
    committed round, with every round exactly once."""
    run_dir = tmp_path / "run"
    process, token = _in_round_two(run_dir)
    started: set[int] = set()
    try:
        started = _started_by(process.pid, token)
        os.killpg(process.pid, signal.SIGKILL)  # no handler runs: the command just vanishes
        process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _alive(started | marked_processes(token)) and time.monotonic() < deadline:
            time.sleep(0.5)
        survivors = _alive(started | marked_processes(token))
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _alive(started | marked_processes(token)):  # even when a check fails
            psutil.Process(pid).kill()
    assert not survivors, f"still running after SIGKILL: {[_cmdline(p) for p in survivors]}"

    result, leftovers = simulate(run_dir, INTERRUPTED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "continuing it" in result.stdout and not leftovers
    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]


def test_a_killed_simulation_worker_stops_the_run_clearly_and_the_rerun_resumes(tmp_path):
    """SIGKILL of one Ray ClientApp actor (issue "Hardening" §4): Flower never replaced it and
    a healthy node's update was later rejected with the same ActorDiedError, the run going on
    with nodes silently lost. Now the run stops, saying why and how to continue."""
    run_dir = tmp_path / "run"
    process, token = _in_round_two(run_dir)
    started: set[int] = set()
    try:
        started = _started_by(process.pid, token)
        actors = [p for p in started if "ClientAppActor" in _cmdline(p)]
        assert actors, [_cmdline(p) for p in started]
        psutil.Process(actors[0]).kill()
        rest, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _alive(started | marked_processes(token)):
            psutil.Process(pid).kill()
    assert process.returncode == 1, rest
    assert "a simulation worker (a Ray ClientApp actor) died" in rest, rest[-3000:]
    assert "rerun the same command" in rest

    result, leftovers = simulate(run_dir, INTERRUPTED)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "continuing it" in result.stdout and not leftovers
    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
