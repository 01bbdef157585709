"""A finished run's fine-tuned text classifier and its test split, rebuilt as the run built them.

The run's settings come from RUN_DIR/config.json, its vocabulary from RUN_DIR/tokenizer.json
(the copy the run recorded, so a run with a public checkpoint needs no checkpoint package
here), the classifier's architecture from models/finetuned-hf/config.json and its weights from
models/finetuned.safetensors. The test split is recomputed from the same seeded plan the run
used (common/data/run_splits.py); its record count is checked against summary.json, so a data
folder that changed since the run is refused instead of silently scored on other records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig

from common.config_error import ConfigError
from common.data.data_folders import DataFolderError
from common.data.run_splits import text_splits
from common.data.tokenizer import encode_texts, load_tokenizer
from common.run_config import RunConfig
from common.run_layout import (
    CONFIG_FILE,
    FINETUNED_HF_DIR,
    MODELS_DIR,
    SUMMARY_FILE,
    TOKENIZER_FILE,
    model_file,
)
from common.tasks import get_task
from common.tasks.mlm import bert_config, tokenizer_path
from server.evaluation.safetensors_export import load_state
from server.evaluation.text_classifier import MeanPoolClassifier

FINETUNED_WEIGHTS = Path(MODELS_DIR) / model_file("finetuned")
FINETUNED_HF = Path(MODELS_DIR) / FINETUNED_HF_DIR
# Settings `--set` may change: where the run's inputs live now (a moved data folder or
# checkpoint). Anything else would score a different model or split than the run's.
RELOCATABLE = ("data", "init", "tokenizer")


class CompressionError(Exception):
    """RUN_DIR cannot be compressed; the message says why and what to do (no traceback)."""


@dataclass(frozen=True)
class FinishedRun:
    """What compression needs from a finished run."""

    run_dir: Path
    config: RunConfig
    summary: dict
    model: MeanPoolClassifier  # fp32, eval mode
    test_inputs: tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask) int64
    test_labels: np.ndarray
    num_classes: int
    # What the server may train on while compressing: the run's labeled set (never client
    # records); the public corpus comes from config.public_corpus (server_data.py).
    labeled_inputs: tuple[torch.Tensor, torch.Tensor]
    labeled_labels: torch.Tensor
    label_names: list[str]
    tokenizer_file: Path

    @property
    def weights_file(self) -> Path:
        """The fp32 weights the run saved (the reference every variant is compared with)."""
        return self.run_dir / FINETUNED_WEIGHTS


def load_finished_run(run_dir: str | Path, overrides: dict[str, str] | None = None
                      ) -> FinishedRun:
    """Load RUN_DIR's fine-tuned classifier and rebuild its test split.

    `overrides` (hyphenated keys, from `--set`) may only relocate inputs (`RELOCATABLE`).
    Raises `CompressionError` for a folder that is not a finished text run with a fine-tuned
    model, and `ConfigError` for a bad override.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    config = _run_config(run_dir, overrides or {})
    summary = _summary(run_dir)
    if get_task(config.task).data_kind != "text":
        raise CompressionError(f"{run_dir} is a run of the {config.task!r} task; compression "
                               "handles the text classifier only (images: not yet)")
    if not (run_dir / FINETUNED_WEIGHTS).is_file():
        raise CompressionError(f"{run_dir} has no fine-tuned model ({FINETUNED_WEIGHTS}): a "
                               "run with downstream=false pretrains only; nothing to compress")
    try:
        splits = text_splits(config)
    except DataFolderError as err:
        raise CompressionError(f"the run's data: {err} (moved since the run? point "
                               "--set data=... at it)") from None
    num_classes = len(splits.label_names)
    expected = summary.get("labels", {}).get("test_records")
    if expected is not None and expected != len(splits.test_labels):
        raise CompressionError(
            f"the test split rebuilt from the run's settings has {len(splits.test_labels)} "
            f"records, the run's summary says {expected}: its data changed since the run "
            "(point --set data=... at the folder the run used)")
    tokenizer_file = run_dir / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        tokenizer_file = Path(tokenizer_path(config))
    tokenizer = load_tokenizer(str(tokenizer_file))
    model = _classifier(run_dir, config, tokenizer.get_vocab_size(), num_classes)
    ids, mask = encode_texts(tokenizer, splits.test_texts, config.max_length)
    return FinishedRun(run_dir=run_dir, config=config, summary=summary, model=model,
                       test_inputs=(ids, mask), test_labels=np.asarray(splits.test_labels),
                       num_classes=num_classes,
                       labeled_inputs=encode_texts(tokenizer, splits.labeled_texts,
                                                   config.max_length),
                       labeled_labels=torch.as_tensor(splits.labeled_labels, dtype=torch.long),
                       label_names=list(splits.label_names), tokenizer_file=tokenizer_file)


def _run_config(run_dir: Path, overrides: dict[str, str]) -> RunConfig:
    if not run_dir.is_dir():
        raise CompressionError(f"{run_dir} is not a folder (expected a RUN_DIR of a finished "
                               "`fedssl simulate` run)")
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise CompressionError(f"{run_dir} has no {CONFIG_FILE}: not a fedssl RUN_DIR")
    for key in overrides:
        if key not in RELOCATABLE:
            raise ConfigError(key, "compress reuses the run's own settings; --set may only "
                              f"point at moved inputs: {', '.join(RELOCATABLE)}")
    try:
        values = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CompressionError(f"{config_file} is unreadable: {err}") from None
    try:
        # A RUN_DIR records the run under its own path; the folder may have moved since.
        return RunConfig.from_mapping({**values, **overrides, "run-dir": str(run_dir)})
    except ConfigError as err:
        if err.key in overrides:
            raise  # the user's own --set: a usage error
        hint = (" (an input that moved: point --set at it)" if err.key in RELOCATABLE
                else " (a run of another fedssl version?)")
        raise CompressionError(f"{config_file}: {err}{hint}") from None


def _summary(run_dir: Path) -> dict:
    summary_file = run_dir / SUMMARY_FILE
    if not summary_file.is_file():
        raise CompressionError(f"{run_dir} has no {SUMMARY_FILE}: the run has not finished "
                               "(still running, interrupted, or failed); resume or rerun it")
    try:
        return json.loads(summary_file.read_text())
    except (OSError, ValueError) as err:
        raise CompressionError(f"{summary_file} is unreadable: {err}") from None


def _classifier(run_dir: Path, config: RunConfig, vocab_size: int, num_classes: int
                ) -> MeanPoolClassifier:
    """The fp32 fine-tuned classifier: the saved architecture, the saved weights."""
    hf_config = run_dir / FINETUNED_HF / "config.json"
    if hf_config.is_file():
        bert_cfg = BertConfig.from_pretrained(str(hf_config.parent))
    elif config.init == "none":  # an older run without the HF folder: the shape settings
        bert_cfg = bert_config(config.model_shape, vocab_size, num_classes)
    else:
        raise CompressionError(f"{run_dir} has no {FINETUNED_HF}/config.json, which names "
                               "the architecture of a run with a public checkpoint")
    if bert_cfg.num_labels != num_classes:
        raise CompressionError(f"the saved classifier predicts {bert_cfg.num_labels} classes, "
                               f"the run's data has {num_classes}: its data changed since "
                               "the run")
    model = MeanPoolClassifier(bert_cfg)
    try:
        model.load_state_dict(load_state(run_dir / FINETUNED_WEIGHTS))
    except (RuntimeError, OSError) as err:
        raise CompressionError(f"{run_dir / FINETUNED_WEIGHTS} does not fit the saved "
                               f"architecture: {str(err).splitlines()[0]}") from None
    return model.eval()
