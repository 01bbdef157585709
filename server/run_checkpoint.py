"""Server checkpoints: after every round, what a restarted server needs to continue the run.

Per round, in this order (RoundRecorder): the ledger, the round's model file
(`checkpoints/round-N.safetensors`), the metrics line, then `checkpoint.json`, the commit
point. A server killed at any moment restarts from the last committed round: a round whose
commit did not happen is done again (its clients' spend is then counted twice: an
over-count, never an under-count), and no committed round is repeated or skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.model_updates import State
from common.run_config import ConfigError, RunConfig
from common.run_layout import (
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    GLOBAL_MODEL_FILE,
    ROUND_MODEL_GLOB,
    round_model_file,
)
from server.atomic_json import write_json
from server.evaluation.safetensors_export import load_state, save_state

NOT_COMPARED = ("run-dir",)  # where the run lives may move; every other setting must match


class ResumeError(RuntimeError):
    """RUN_DIR's checkpoint cannot be used (corrupt, truncated, or its model is missing)."""


@dataclass(frozen=True)
class Checkpoint:
    """The last committed round of a run and the global model after it."""

    round: int
    model_file: Path
    model_sha256: str

    def verify(self) -> None:
        """ResumeError unless the round's model file is there and matches its SHA-256."""
        if not self.model_file.is_file() or _sha256(self.model_file) != self.model_sha256:
            raise ResumeError(f"the checkpointed model {self.model_file} is missing or does "
                              "not match checkpoint.json (corrupt or truncated); move RUN_DIR "
                              "aside to start a new run")

    def load_model(self) -> State:
        """The global model after `round` (ResumeError if the file does not match)."""
        self.verify()
        return load_state(self.model_file)


def save_round_model(run_dir: Path, server_round: int, state: State) -> tuple[Path, str]:
    """Write the round's global model (not yet committed); returns its file and SHA-256."""
    model_file = run_dir / CHECKPOINTS_DIR / round_model_file(server_round)
    save_state(state, model_file)
    return model_file, _sha256(model_file)


def commit_round(
    run_dir: Path, server_round: int, model_file: Path, digest: str, state: State,
    config: RunConfig, ledger_head: dict[str, Any] | None = None,
) -> None:
    """Make `server_round` the one a restart continues after (atomic), then tidy up.

    `ledger_head` (row count and head hash of the run ledger after this round's entries) is
    the anchor `fedssl audit` checks when the run never wrote summary.json.
    """
    _write_json(run_dir / CHECKPOINT_FILE, {
        "round": server_round, "model_file": str(model_file.relative_to(run_dir)),
        "model_sha256": digest, "config": _compared(config),
        **({"ledger": ledger_head} if ledger_head is not None else {}),
    })
    save_state(state, run_dir / GLOBAL_MODEL_FILE)  # the documented "latest model" file
    for old in (run_dir / CHECKPOINTS_DIR).glob(ROUND_MODEL_GLOB):
        if old != model_file:  # keep only the committed round's file
            old.unlink(missing_ok=True)


def update_anchor(run_dir: Path, ledger_head: dict[str, Any]) -> None:
    """Move checkpoint.json's ledger anchor forward (after the post-run ledger sync)."""
    path = run_dir / CHECKPOINT_FILE
    if path.exists():
        _write_json(path, {**json.loads(path.read_text()), "ledger": ledger_head})


def find_checkpoint(run_dir: Path, config: RunConfig) -> Checkpoint | None:
    """The run's last committed round, or None for a fresh RUN_DIR.

    Raises ConfigError when RUN_DIR holds a run with other settings (a restart must be the
    same run), and ResumeError when checkpoint.json is unreadable.
    """
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        saved_round, model_file = int(data["round"]), str(data["model_file"])
        digest, saved_config = str(data["model_sha256"]), dict(data["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"{path} is corrupt ({err}); move RUN_DIR aside or delete the file "
                          "to start a new run") from None
    now = _compared(config)
    changed = sorted(k for k in set(now) | set(saved_config) if now.get(k) != saved_config.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved_config.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise ConfigError("run-dir", f"{run_dir} holds a run with other settings ({diffs}); "
                          "resume it with the same settings, or use a new RUN_DIR")
    return Checkpoint(round=saved_round, model_file=run_dir / model_file, model_sha256=digest)


def _compared(config: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_mapping().items() if k not in NOT_COMPARED}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, data: Any) -> None:

    write_json(path, data)

