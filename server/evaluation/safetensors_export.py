"""Write and read model weights as safetensors, atomically (a crash never leaves a torn file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def save_state(model_or_state: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """Save a module's `state_dict()` (or a tensor dict) to `path` as safetensors, atomically.

    Tensors are detached, moved to CPU and cloned: safetensors rejects non-contiguous tensors
    and tensors that share storage (e.g. tied weights), and a clone fixes both. Make pruning
    permanent first, or the file holds `weight_orig`/`weight_mask` instead of `weight`.
    The file is written to a temporary name in the same directory, fsynced, then renamed over
    `path` with `os.replace` (atomic on one filesystem).
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file into a dict of CPU tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_file(str(path))
