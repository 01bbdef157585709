"""Spend whose reply never reached the server still reaches the run's reports.

In Flower's real simulation engine with `round-timeout=1`: every node trains its one round,
but no reply arrives in time, so the round is skipped and every reply is dropped. Before the
ledger sync, summary.json said `max_epsilon 0.0` and `fedssl audit` passed with "no
privacy-consuming event" while each node's own ledger held its spend (measured with the same
settings and `round-timeout=8`: nodes at ε 1.70-1.86, summary 0.0). Now the server asks every
node it sampled for its ledger after the last round: the summary shows exactly what the nodes'
own ledgers say, and the audit cross-checks them. (One round: with two, a node may never get
to a message the server stopped waiting for, and is then rightly reported as "≥".) And since no
round used a single update, the run exits 1 instead of reporting an untrained model as trained.
"""

from __future__ import annotations

import json

from simulation_runs import TINY_RUN, fedssl_in_process, simulate

from common.privacy.ledger import PrivacyLedger

SETTINGS = {**TINY_RUN, "num-clients": 3, "num-rounds": 1, "round-timeout": 1,
            "downstream": "false", "target-epsilon": 4.0}


def test_lost_replies_are_in_the_summary_and_the_audit(tmp_path):
    run_dir = tmp_path / "run"
    result, leftovers = simulate(run_dir, SETTINGS)
    # No round used an update: the run must not exit 0 as if it had trained, but its summary
    # (with every node's spend) is written all the same.
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fedssl: error: no federated round trained: all 1 round(s) were skipped" \
        in result.stderr
    assert not leftovers
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(line["skipped"] and len(line["dropouts"]) == 3 for line in lines)
    assert "[fedssl] ledger sync: 3 node(s) answered" in result.stdout
    privacy = json.loads((run_dir / "summary.json").read_text())["privacy"]
    assert privacy["unknown_nodes"] == []
    for pid in range(3):
        node = f"partition-{pid}"
        own = PrivacyLedger.open(run_dir / "nodes" / node / "ledger.sqlite", node).spends()
        assert [e.round for e in own] == [1]  # it trained; its reply did not count
        client = next(c for c in privacy["clients"] if c["node"] == node)
        assert client["epsilon"] == own[-1].epsilon > 0 and not client["lower_bound"]
        assert client["run_steps"] == TINY_RUN["local-steps"]
    assert privacy["max_epsilon"] == max(e for e in privacy["per_client"].values()) > 3.9
    assert not privacy["max_epsilon_lower_bound"]
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err
