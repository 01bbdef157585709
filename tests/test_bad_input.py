"""Bad input to `fedssl simulate` and the launchers: one clear line, a non-zero exit, no
traceback, and nothing started. (Bad settings in general: test_run_config.py; data folders:
test_local_data.py; audit input: test_ledger_audit.py.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from simulation_runs import TINY_RUN, fedssl_in_process

from common.run_config import RunConfig
from server.deployment.flower_processes import SimulationError
from server.deployment.local_deployment import Credentials, LocalDeployment
from server.run_checkpoint import CHECKPOINT_FILE, commit_round, save_round_model

SETTINGS = {**TINY_RUN, "num-clients": 2, "num-rounds": 3}


def _simulate(run_dir: Path, *extra: str) -> tuple[int, str]:
    args = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    code, out, err = fedssl_in_process("simulate", "--out", str(run_dir), *args, *extra)
    assert "Traceback" not in out + err
    return code, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _committed_run(run_dir: Path) -> Path:
    """RUN_DIR holding round 1 of SETTINGS, committed exactly as the server does it."""
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **SETTINGS,
                                     "run-dir": str(run_dir)})
    run_dir.mkdir(parents=True)
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    model_file, digest = save_round_model(run_dir, 1, state)
    commit_round(run_dir, 1, model_file, digest, state, config)
    return model_file


@pytest.mark.parametrize(("extra", "expected"), [
    (["--set", "num-rounds"], "setting 'num-rounds': expected key=value"),  # malformed
    (["--set", "num-round=3"], "setting 'num-round': unknown setting"),
    (["--set", "task=nonsense"], "setting 'task'"),
    (["--set", "short-round=sometimes"], "setting 'short-round'"),
])
def test_bad_settings(tmp_path, extra, expected):
    code, err = _simulate(tmp_path / "run", *extra)
    assert code == 2
    assert expected in _one_line(err)
    assert not (tmp_path / "run").exists()


def test_corrupt_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    _committed_run(run_dir)
    (run_dir / CHECKPOINT_FILE).write_text('{"round": 1, "model_')  # cut off mid-write
    code, err = _simulate(run_dir)
    assert code == 2
    assert "checkpoint.json is corrupt" in _one_line(err)


def test_truncated_checkpoint_model(tmp_path):
    run_dir = tmp_path / "run"
    model_file = _committed_run(run_dir)
    model_file.write_bytes(model_file.read_bytes()[:100])
    code, err = _simulate(run_dir)
    assert code == 2
    assert "corrupt or truncated" in _one_line(err) and "round-1.safetensors" in err


def test_corrupt_run_ledger_when_resuming(tmp_path):
    run_dir = tmp_path / "run"
    _committed_run(run_dir)
    (run_dir / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    code, err = _simulate(run_dir)
    assert code == 2
    line = _one_line(err)
    assert "cannot use privacy ledger" in line and "ledger.sqlite" in line


def test_port_in_use_names_the_port(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        missing = tmp_path / "unused.pem"
        deployment = LocalDeployment(tmp_path / "work", Credentials(missing, missing, missing),
                                     port=port)
        with pytest.raises(SimulationError) as err, deployment:
            deployment.start_superlink()
    message = str(err.value)
    assert f"port {port} on 127.0.0.1" in message and "already in use" in message
    assert "\n" not in message
    assert not deployment.processes  # nothing was started
