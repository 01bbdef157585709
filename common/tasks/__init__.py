"""The SSL task registry: each task is a bundle of plain functions, selected by `task=`.

A task says how to build its model, how a client gets its records as tensors (a simulated
client from its partition of the embedded data, a deployed one from its data folder), and
its per-record loss. Tasks: `mlm` (text: masked language modelling on a small BERT), `mae`
(images: masked-patch reconstruction with a GroupNorm CNN) and `rotation` (the same CNN
predicting each image's rotation). DP-SGD bounds one record's influence only if the loss is
one term per record, so the registry contract is a loss of shape `[B]`; the client's DP loop
averages it.

A task is one module here that defines `TASK = SslTask(...)`, plus one line in TASK_MODULES.
Modules load by name on first use, so this registry imports no task (and so no model code),
and the run config can check a task name without an import loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.config_error import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from common.run_config import RunConfig

# The registry: task name -> the module that defines its TASK.
TASK_MODULES: dict[str, str] = {
    "mlm": "common.tasks.mlm",
    "mae": "common.tasks.mae",
    "rotation": "common.tasks.rotation",
    "contrastive": "common.tasks.contrastive",
}


@dataclass(frozen=True)
class SslTask:
    """A self-supervised objective with the functions the pipeline needs from it."""

    name: str
    data_kind: str  # "text" or "image": what a node's data folder holds (common/data/data_folders.py)
    build_model: Callable[[RunConfig], nn.Module]
    # A node's records as tensors: simulated (its partition) and deployed (its data folder);
    # the last argument is the node's de-identification engine (common/data/deidentification.py),
    # which text tasks apply before tokenizing and image tasks refuse unless "off".
    client_tensors: Callable[[RunConfig, int, str], tuple[torch.Tensor, ...]]
    folder_tensors: Callable[[RunConfig, Path, str], tuple[torch.Tensor, ...]]
    # Hash of the task's public inputs (e.g. the vocabulary): server and nodes must agree.
    public_inputs_sha256: Callable[[RunConfig], str]
    public_files: Callable[[RunConfig], dict[str, str]]  # copied into RUN_DIR: name -> path
    per_record_loss: Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]
    # Builds the run's split plan (embedded data or the user's folder) and checks it: raises
    # DataFolderError or ConfigError before a run starts (see check_run_data).
    check_data: Callable[[RunConfig], None]
    # Opacus clipping mode for its DP-SGD (client/dp_training.py): the fastest one that is
    # exact for the task's layers (tests/test_mlm_privacy.py checks ghost == hooks for mlm).
    grad_sample_mode: str = "hooks"
    # Parameter names `freeze-embeddings` keeps fixed in clients' DP-SGD (empty: not supported).
    vocabulary_parameters: tuple[str, ...] = ()
    # The clipping mode when they are frozen (benchmarks/mlm_step_time.md, quiet levers table).
    frozen_grad_sample_mode: str = "hooks"
    # Its public corpus's texts as model inputs, for the server's warm start
    # (`warm-start-steps`, server/public_warm_start.py); None: it has no public corpus.
    public_records: Callable[[RunConfig, list[str]], tuple[torch.Tensor, ...]] | None = None
    # Its objective reads public texts every round (contrastive negatives): `public-corpus`.
    public_negatives: bool = False
    needs_checkpoint: bool = False  # adapts a public encoder only (`init` must name one)
    # With `init` (frozen encoder, small adapters) per-sample gradients are cheap and ghost's
    # second backward pass is not: MiniLM + LoRA, batch 64, measured hooks 1.17x a non-private
    # step vs ghost 1.70x (benchmarks/adapter_step_time.py, docs/public-encoders.md).
    adapter_grad_sample_mode: str = "hooks"
    # Its records are token ids and its model exposes `vocab_size` and `special_ids`, so
    # `fedssl audit-empirical` can plant text canaries (simulations/privacy_audit/).
    text_canaries: bool = False

    @property
    def public_corpus(self) -> bool:
        """Whether it has a public corpus for `warm-start-steps`."""
        return self.public_records is not None


def grad_sample_mode(task: SslTask, config: RunConfig) -> str:
    """The Opacus clipping mode a client uses for `task` under `config`."""
    if config.init != "none":
        return task.adapter_grad_sample_mode
    return task.frozen_grad_sample_mode if config.freeze_embeddings else task.grad_sample_mode


def federated_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What travels between server and clients: the whole state, or for a model over a frozen
    public encoder (which defines `federated_keys`) only its trainable adapters and heads."""
    state = model.state_dict()
    keys = getattr(model, "federated_keys", None)
    return state if keys is None else {key: state[key] for key in keys}


def load_federated_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` (as `federated_state` made it) into `model`; every key must match."""
    keys = getattr(model, "federated_keys", None)
    if keys is None:
        model.load_state_dict(state)
        return
    if set(state) != set(keys):
        raise ValueError(f"federated state has {len(state)} keys, the model federates "
                         f"{len(keys)} (e.g. {sorted(set(state) ^ set(keys))[:3]})")
    model.load_state_dict(state, strict=False)


def get_task(name: str) -> SslTask:
    """The registered task called `name` (its module is imported on first use)."""
    if name not in TASK_MODULES:
        raise ConfigError("task", f"unknown task '{name}'; known: {', '.join(TASK_MODULES)}")
    task: SslTask = importlib.import_module(TASK_MODULES[name]).TASK
    return task


def check_run_data(config: RunConfig) -> None:
    """Build the run's split plan now (embedded data, or the user's `data` folder), so bad
    data and impossible splits fail before a run starts.

    Raises DataFolderError for an unusable folder (the messages of `fedssl check-data`) and
    ConfigError for an impossible split (e.g. more clients than records, no labelled records).
    The plan is cached, so the run itself reuses it.
    """
    get_task(config.task).check_data(config)


def freeze_vocabulary(task: SslTask, model: nn.Module) -> int:
    """Exclude the task's vocabulary matrices from training (`freeze-embeddings`).

    Opacus then neither clips nor noises them, and the update leaves them unchanged (Δ = 0).
    Returns how many parameters stay trainable.
    """
    named = dict(model.named_parameters())
    missing = [name for name in task.vocabulary_parameters if name not in named]
    if missing or not task.vocabulary_parameters:
        raise ValueError(f"task '{task.name}' cannot freeze its vocabulary: {missing or 'none'}")
    for name in task.vocabulary_parameters:
        named[name].requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
