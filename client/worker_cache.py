"""Per-process caches for what a simulated client may safely reuse from an earlier message.

Flower's simulation runs every ClientApp message of many simulated nodes inside a few
long-lived Ray actor processes; a deployed node starts a fresh process per message, where these
caches start empty and cost nothing. What is cached here is *public or derived only from the
run settings*, never per-node state:

* a simulated partition's record tensors, keyed by everything that determines them (task,
  split settings, max-length, the public-input hash covering the tokenizer file's content, the
  partition id and the node's de-identification engine). Callers get a copy, so no caller can change what the next one receives.
  The split plan and the tokenizer below it are cached by their own modules
  (`common.data.demo_text`, `common.data.demo_images`, `common.data.tokenizer`), and σ calibration and the
  per-(σ, q) RDP curve by `common.privacy.accounting` (pure functions).

Deliberately *not* cached: the model (a copy of a cached skeleton measured no faster than
building one, and a reused module could carry Opacus hooks, `grad_sample` or optimizer state
from one node to the next), the optimizer, the PrivacyEngine and its accountant, RNGs, the
node's ledger and its Flower `context.state`. tests/test_worker_cache.py proves that a node's
reply does not depend on which nodes the same process served before.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from common.data.partitioning import SplitSettings
from common.run_config import RunConfig
from common.tasks import SslTask

MAX_PARTITIONS = 4096  # entries kept per process (a few 10–100 KiB tensors each), LRU beyond
_records: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()


def partition_records(
    task: SslTask, config: RunConfig, partition_id: int, deid: str
) -> tuple[torch.Tensor, ...]:
    """A simulated node's record tensors (de-identified with engine `deid`), built once per
    process, copied for every caller."""
    key = (task.name, SplitSettings.from_config(config), config.max_length, config.tokenizer,
           task.public_inputs_sha256(config), partition_id, deid)
    cached = _records.get(key)
    if cached is None:
        cached = tuple(t.clone() for t in task.client_tensors(config, partition_id, deid))
        _records[key] = cached
        while len(_records) > MAX_PARTITIONS:
            _records.popitem(last=False)
    else:
        _records.move_to_end(key)
    return tuple(t.clone() for t in cached)  # the cached tensors never leave this module


def clear() -> None:
    """Forget every cached entry (tests; a worker never needs it)."""
    _records.clear()
