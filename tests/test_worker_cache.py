"""Per-worker caches leak nothing between simulated nodes (client/worker_cache.py).

A Ray actor serves many simulated nodes one after another in one process. The proof: node B's
reply (update, metrics, ledger entries) and the torch RNG state it leaves behind are identical
whether B is served by a process that already served B and node A (every cache warm, B's own
records cached) or by a fresh process (every cache cold). And cached objects cannot be changed
by a caller.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from simulation_runs import SETTINGS, serve

ROOT = Path(__file__).resolve().parent.parent
# Bit-for-bit comparisons need DP noise that repeats: the simulation switch (secret noise is
# tested in tests/test_secret_noise.py with the same `serve`).
def test_node_reply_is_the_same_after_other_nodes_as_in_a_fresh_process(tmp_path):
    from client import worker_cache

    worker_cache.clear()
    first_b = serve(1, tmp_path / "warm-1", node_id=11)
    serve(0, tmp_path / "warm-2", node_id=10)  # another node in between, with other records
    torch.manual_seed(1234)  # and a different global RNG state left behind
    warm_b = serve(1, tmp_path / "warm-3", node_id=11)
    assert warm_b["status"] == "trained"
    assert len(worker_cache._records) == 2  # B's records really came from the cache

    out = tmp_path / "fresh.json"
    done = subprocess.run([sys.executable, __file__, str(out), str(tmp_path / "fresh")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh_b = json.loads(out.read_text())
    assert warm_b == fresh_b
    assert first_b == fresh_b


def test_cached_records_cannot_be_changed_by_a_caller():
    from client import worker_cache
    from common.run_config import RunConfig
    from common.tasks import get_task

    config = RunConfig.from_mapping(SETTINGS)
    task = get_task(config.task)
    original = [t.clone() for t in worker_cache.partition_records(task, config, 2, "off")]
    handed_out = worker_cache.partition_records(task, config, 2, "off")
    for tensor in handed_out:
        tensor.fill_(0)  # a careless caller
    again = worker_cache.partition_records(task, config, 2, "off")
    assert all(torch.equal(a, b) for a, b in zip(again, original, strict=True))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(again, handed_out, strict=True))


def test_cached_accounting_arrays_are_read_only():
    """The per-(σ, q) RDP arrays are shared by every node a worker serves: read-only."""
    from common.privacy.accounting import RDP_ORDERS, _legacy_rdp_per_step
    from common.privacy.epsilon_curves import replace_one_rdp

    for curve in (_legacy_rdp_per_step(1.0, 0.125), replace_one_rdp(1.0, 0.125, RDP_ORDERS)):
        with pytest.raises(ValueError):
            curve[0] = 0.0


def test_cached_epsilon_is_the_same_whatever_the_worker_computed_before():
    """ε of node B is bit-for-bit the same in a fresh process and after the worker served
    node A, whose history shares B's first event (the PLD prefix cache then serves B's first
    event from A's entry). Calibration and budgets evaluate exactly this function."""
    from common.privacy import accounting
    from common.privacy.accounting import REPLACE_ONE, epsilon_of

    node_a = [(1.3, 0.125, 4), (0.9, 0.125, 4)]
    node_b = [(1.3, 0.125, 4), (1.1, 0.25, 2)]

    def cold() -> None:
        accounting._PREFIXES.clear()
        accounting.event_pld.cache_clear()
        accounting._calibrate.cache_clear()

    def node_b_numbers() -> tuple[float, float]:
        return epsilon_of(node_b, 1e-5, REPLACE_ONE), epsilon_of(node_b[:1], 1e-5, REPLACE_ONE)

    cold()
    fresh = node_b_numbers()
    cold()
    epsilon_of(node_a, 1e-5, REPLACE_ONE)
    assert node_b_numbers() == fresh
    assert node_b_numbers() == fresh  # and again, every value now from the cache


if __name__ == "__main__":  # the fresh process: serve node B only, write its digest
    sys.path.insert(0, str(ROOT))
    Path(sys.argv[1]).write_text(json.dumps(serve(1, Path(sys.argv[2]), node_id=11)))
