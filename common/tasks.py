"""The SSL task registry: each task is a bundle of plain functions, selected by `task=`.

A task says how to build its model, how a client gets its records as tensors (a simulated
client from its partition of the embedded data, a deployed one from its data folder), and
its per-record loss. Tasks: `mlm` (text: masked language modelling on a small BERT), `mae`
(images: masked-patch reconstruction with a GroupNorm CNN) and `rotation` (the same CNN
predicting each image's rotation). DP-SGD needs the loss as one term per record (DESIGN.md),
so the registry contract is a loss of shape `[B]`; the client's DP loop averages it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common import mae_task, mlm_task, rotation_task
from common.run_config import ConfigError, RunConfig
from common.tokenizer import tokenizer_sha256


@dataclass(frozen=True)
class SslTask:
    """A self-supervised objective with the functions the pipeline needs from it."""

    name: str
    data_kind: str  # "text" or "image": what a node's data folder holds (common/local_data.py)
    build_model: Callable[[RunConfig], nn.Module]
    client_tensors: Callable[[RunConfig, int], tuple[torch.Tensor, ...]]  # simulated node
    folder_tensors: Callable[[RunConfig, Path], tuple[torch.Tensor, ...]]  # deployed node
    # Hash of the task's public inputs (e.g. the vocabulary): server and nodes must agree.
    public_inputs_sha256: Callable[[RunConfig], str]
    public_files: Callable[[RunConfig], dict[str, str]]  # copied into RUN_DIR: name -> path
    per_record_loss: Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Generator], torch.Tensor]
    # Opacus clipping mode for its DP-SGD (client/dp_training.py): the fastest one that is
    # exact for the task's layers (tests/test_mlm_privacy.py checks ghost == hooks for mlm).
    grad_sample_mode: str = "hooks"
    # Parameter names `freeze-embeddings` keeps fixed in clients' DP-SGD (empty: not supported).
    vocabulary_parameters: tuple[str, ...] = ()
    # The clipping mode when they are frozen (benchmarks/mlm_step_time.md, quiet levers table).
    frozen_grad_sample_mode: str = "hooks"


TASKS: dict[str, SslTask] = {
    "mlm": SslTask(
        name="mlm",
        data_kind="text",
        build_model=mlm_task.build_model,
        client_tensors=mlm_task.client_tensors,
        folder_tensors=mlm_task.folder_tensors,
        public_inputs_sha256=lambda config: tokenizer_sha256(mlm_task.tokenizer_path(config)),
        public_files=lambda config: {"tokenizer.json": mlm_task.tokenizer_path(config)},
        per_record_loss=mlm_task.per_record_loss,
        grad_sample_mode="ghost",  # 2.0x a non-private step vs 4.3x with hooks (quiet, CPU)
        vocabulary_parameters=mlm_task.VOCABULARY_PARAMETERS,
        frozen_grad_sample_mode="hooks",  # frozen vocabulary: 1.53x vs ghost's 1.92x (quiet)
    ),
    "mae": SslTask(
        name="mae",
        data_kind="image",
        build_model=mae_task.build_model,
        client_tensors=mae_task.client_tensors,
        folder_tensors=mae_task.folder_tensors,
        public_inputs_sha256=mae_task.public_inputs_sha256,
        public_files=lambda config: {},
        per_record_loss=mae_task.per_record_loss,
    ),
    "rotation": SslTask(  # same images, encoder and downstream as `mae`; another objective
        name="rotation",
        data_kind="image",
        build_model=rotation_task.build_model,
        client_tensors=mae_task.client_tensors,
        folder_tensors=mae_task.folder_tensors,
        public_inputs_sha256=rotation_task.public_inputs_sha256,
        public_files=lambda config: {},
        per_record_loss=rotation_task.per_record_loss,
    ),
}


def check_run_data(config: RunConfig) -> None:
    """Build the run's split plan now (embedded data, or the user's `data` folder), so bad
    data and impossible splits fail before a run starts.

    Raises DataFolderError for an unusable folder (the messages of `fedssl check-data`) and
    ConfigError for an impossible split (e.g. more clients than records, no labelled records).
    The plan is cached, so the run itself reuses it.
    """
    from common.own_data import image_splits, text_splits

    if get_task(config.task).data_kind == "text":
        text_splits(config)
    else:
        splits = image_splits(config, mae_task.DATASET)
        mae_task.images_to_tensors(splits.test_images[:1])  # the task's image shape


check_demo_data = check_run_data  # the name before own data existed


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


def get_task(name: str) -> SslTask:
    """The registered task called `name`."""
    if name not in TASKS:
        raise ConfigError("task", f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]
