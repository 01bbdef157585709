"""Public first, private second: the server pretrains on a public corpus before round 1.

DP training is known to work best as adaptation: whatever can be learned from public data
costs no privacy, so the server learns it first, non-privately, and the clients spend their
budget only on what their private records add. The public corpus is an explicit run input,
never derived from a client's records (`public-corpus`, common/data/public_corpus.py):

* `mlm`, by default: the non-leaf ICD-10-CM headings (chapters, blocks, categories) that ship
  in the `simple-icd-10-cm` package, 23,420 texts, the same public corpus the shipped
  vocabulary is trained on. They are public (published with the classification) and disjoint
  from the billable code descriptions that play the clients' private records: headings that
  repeat a description word for word are excluded
  (`common.data.icd10_corpus.load_public_headings`).
* `mlm` with `public-corpus=PATH`: a user's own public text of their domain (a .txt file or a
  folder of text files), public by declaration.
* `mae`: no public image corpus is wired yet (`warm-start-steps` must stay 0).

The warm start writes no ledger entry (it reads no client record); `warm_start.json` in RUN_DIR
records the corpus, its SHA-256, the steps and the loss curve, so a reader can check it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common.data.public_corpus import PublicCorpus, load_public_corpus
from common.run_config import ConfigError, RunConfig
from common.run_layout import WARM_START_FILE
from common.tasks import SslTask, get_task


def public_corpus(config: RunConfig) -> tuple[tuple[torch.Tensor, ...], PublicCorpus]:
    """The run's public records as model inputs, and the corpus they come from."""
    encode = get_task(config.task).public_records
    if encode is None:
        raise ConfigError("warm-start-steps", f"task '{config.task}' has no public corpus "
                          "for a warm start; use warm-start-steps=0")
    corpus = load_public_corpus(config.public_corpus)
    return encode(config, list(corpus.texts)), corpus


def warm_start(
    config: RunConfig, task: SslTask, model: nn.Module, run_dir: Path,
    say: Callable[[str], None] = print,
) -> dict[str, object]:
    """Train `model` in place for `warm-start-steps` non-private steps on the public corpus.

    Adam at the run's learning rate, batches of `batch-size` drawn uniformly, seeded from the
    run seed; the objective is the task's own SSL loss (mean of the per-record terms).
    Writes and returns the `warm_start.json` record.
    """
    records, corpus = public_corpus(config)
    generator = torch.Generator().manual_seed(config.seed + 7919)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps, losses, started = config.warm_start_steps, [], time.monotonic()
    report_every = max(1, steps // 10)
    model.train()
    for step in range(steps):
        rows = torch.randint(len(records[0]), (config.warm_start_batch_size,),
                             generator=generator)
        loss = task.per_record_loss(model, tuple(t[rows] for t in records), generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % report_every == 0 or step + 1 == steps:
            recent = losses[-report_every:]
            say(f"[fedssl] public warm start: step {step + 1}/{steps}, loss "
                f"{sum(recent) / len(recent):.3f}")
    window = max(1, min(100, steps // 10))
    record = {
        "corpus": corpus.name,
        "records": len(records[0]),
        "corpus_sha256": corpus.sha256,
        "steps": steps,
        "batch_size": config.warm_start_batch_size,
        "learning_rate": config.learning_rate,
        "loss_first": _mean(losses[:window]),
        "loss_last": _mean(losses[-window:]),
        "seconds": round(time.monotonic() - started, 1),
        "privacy": "public data: no privacy cost, no ledger entry",
    }
    (run_dir / WARM_START_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
