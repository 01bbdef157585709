"""The public warm start: trains on the public corpus only, is seeded, and is on record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from common.data.icd10_corpus import load_icd10_records, load_public_headings
from common.run_config import ConfigError, RunConfig
from common.run_layout import WARM_START_FILE
from common.tasks import get_task
from server.public_warm_start import public_corpus, warm_start

# 30 steps: the loss falls by about 1.7 (3.4 times the margin asserted), in half the time of 60.
SMALL = {"hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 24,
         "batch-size": 32, "learning-rate": 3e-3, "warm-start-steps": 30}


def _run(tmp_path: Path, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    config = RunConfig.from_mapping({**SMALL, "seed": seed})
    task = get_task("mlm")
    torch.manual_seed(seed)
    model = task.build_model(config)
    record = warm_start(config, task, model, tmp_path, say=lambda line: None)
    return record, {k: v.clone() for k, v in model.state_dict().items()}


def test_warm_start_learns_from_public_text_and_is_recorded(tmp_path: Path):
    record, weights = _run(tmp_path, seed=0)
    assert record["loss_last"] < record["loss_first"] - 0.5  # it learned something
    assert record["records"] == len(load_public_headings())
    on_disk = json.loads((tmp_path / WARM_START_FILE).read_text())
    assert on_disk["corpus_sha256"] == record["corpus_sha256"]
    assert on_disk["steps"] == SMALL["warm-start-steps"]
    again, same = _run(tmp_path, seed=0)  # seeded: identical weights
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert again["loss_last"] == record["loss_last"]


def test_public_corpus_is_disjoint_from_the_private_records():
    private = set(load_icd10_records().texts)
    assert not private & set(load_public_headings())


def test_the_task_registry_says_which_tasks_have_a_public_corpus(monkeypatch):
    """The warm start asks the task's registry entry, not its name: a task that encodes
    public records gets a warm start with no edit here; one that does not is refused."""
    config = RunConfig.from_mapping({"task": "mae"})
    with pytest.raises(ConfigError, match="task 'mae' has no public corpus"):
        public_corpus(config)
    encoded = (torch.zeros(2, 3),)
    with_corpus = dataclasses.replace(get_task("mae"), public_records=lambda c, texts: encoded)
    monkeypatch.setattr("server.public_warm_start.get_task", lambda name: with_corpus)
    records, corpus = public_corpus(config)
    assert records is encoded and corpus.texts and with_corpus.public_corpus
