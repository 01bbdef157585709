"""Secure aggregation in a real deployment on loopback: TLS SuperLink with node authentication,
three SuperNodes with their own data folders, two rounds with `secure-aggregation=true`
(every SecAgg+ stage a real message round trip), and the run's audit passes.

Everything the test starts is stopped by PID at the end; nothing may be left behind.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from simulation_runs import TINY_RUN, fedssl_in_process, flower_processes

from common.data.demo_text import demo_splits
from common.run_config import RunConfig
from server.deployment.local_deployment import Credentials, LocalDeployment
from simulations.cli import main as fedssl

RECORDS_PER_NODE = 300


@pytest.mark.slow  # three SuperNodes, 2 rounds x 4 protocol stages: minutes on 2 cores
def test_secure_aggregation_over_tls_loopback(tmp_path):
    before = flower_processes()
    certs = tmp_path / "certs"
    assert fedssl(["certs", "all", "--out", str(certs), "--host", "127.0.0.1",
                   "--nodes", "3"]) == 0
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **TINY_RUN, "num-clients": 3})
    texts = demo_splits(config).client_texts
    deployment = LocalDeployment(tmp_path / "work", Credentials.from_certs_dir(certs))
    run_dir = tmp_path / "run"
    started = time.monotonic()
    try:
        deployment.start_superlink()
        for i, name in enumerate("abc"):
            key = certs / "nodes" / f"node-{i + 1}"
            deployment.register_node(key.with_suffix(".pub"))
            folder = tmp_path / f"data-{name}"
            folder.mkdir()
            (folder / "notes.txt").write_text("\n".join(texts[i][:RECORDS_PER_NODE]) + "\n")
            deployment.start_supernode(name, key, {
                "data-dir": str(folder), "state-dir": str(tmp_path / f"state-{name}"),
                "node-name": f"hospital-{name}"})
        deployment.wait_for_nodes(3)
        exit_code = deployment.run_app({**TINY_RUN, "num-clients": 3, "num-rounds": 2,
                                        "run-dir": str(run_dir), "downstream": "false",
                                        "secure-aggregation": "true"})
    finally:
        logs = deployment.logs
        deployment.close()
        leftovers = flower_processes() - before
        for pid in leftovers:
            subprocess.run(["kill", "-9", str(pid)], check=False)
    seconds = time.monotonic() - started
    tail = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
                     for path in sorted(logs.glob("*.log")))
    assert exit_code == 0, tail
    assert not leftovers, f"processes left running: {leftovers}"
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for line in rounds:
        assert sorted(c["node"] for c in line["clients"]) == [
            "hospital-a", "hospital-b", "hospital-c"]
        assert line["attempts"][0]["secure_aggregation"]["contributors"] == 3
        assert all("update-norm" not in c for c in line["clients"])
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err
    print(f"secure-aggregation deployment: {seconds:.0f}s, rounds "
          f"{[r['wall_seconds'] for r in rounds]}")
