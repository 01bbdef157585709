"""Latency of one deployment round: 2 SuperNodes, tiny model, TLS + node auth on loopback.

Measures the round wall time the ServerApp records (metrics.jsonl: send the model, both nodes
train, replies back, ledger written, model saved) and how long importing the ClientApp takes,
because Flower starts a fresh `flwr-clientapp` process for every message (both isolation
modes use the subprocess executor) and so pays that import on every round.

Arms:
  eager-corpus  the ClientApp import as before the fix: the ICD-10 package is preloaded in
                every Python process (via a sitecustomize on PYTHONPATH), which is what the
                old module-level import in common/tasks/mlm.py cost
  lazy-corpus   the current code: deployed nodes never import the embedded corpus

Usage: python benchmarks/deployment_latency.py [--rounds 4] [--out benchmarks/results]
Writes a JSON file per arm and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.deployment.local_deployment import Credentials, LocalDeployment
from simulations.cli import main as fedssl

RECORDS = 400
# A tiny model and few records: the tests' TINY_RUN (tests/simulation_runs.py), written out
# so that the benchmark needs nothing from tests/. The fine-tuning settings only shorten the
# evaluation after the rounds, which is not measured.
TINY_RUN = {
    "max-records": 4000, "local-steps": 4, "batch-size": 32, "label-fraction": 0.05,
    "hidden-size": 32, "num-layers": 1, "intermediate-size": 64, "max-length": 32,
    "finetune-epochs": 2, "finetune-min-steps": 0, "prune-recover-epochs": 1,
}


def import_seconds(env: dict[str, str], repeats: int = 3) -> float:
    """Median wall time of `python -c 'import client.app'` (a ClientApp process's import)."""
    times = []
    for _ in range(repeats):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import client.app"], env=env, cwd=ROOT,
                       check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def run_arm(arm: str, rounds: int, work: Path) -> dict:
    """One deployment with 2 nodes; returns per-round wall seconds and import time."""
    env_extra: dict[str, str] = {}
    if arm == "eager-corpus":
        preload = work / "preload"
        preload.mkdir()
        (preload / "sitecustomize.py").write_text("import simple_icd_10_cm  # noqa\n")
        env_extra["PYTHONPATH"] = f"{preload}{os.pathsep}{ROOT}"
    certs = work / "certs"
    assert fedssl(["certs", "all", "--out", str(certs), "--host", "127.0.0.1",
                   "--nodes", "2"]) == 0
    data = []
    from common.data.demo_text import demo_splits
    from common.run_config import RunConfig
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **TINY_RUN, "num-clients": 2})
    for i, texts in enumerate(demo_splits(config).client_texts, start=1):
        folder = work / f"data-{i}"
        folder.mkdir()
        (folder / "records.txt").write_text("\n".join(texts[:RECORDS]) + "\n")
        data.append(folder)
    creds = Credentials(certs / "ca" / "ca.crt", certs / "superlink" / "server.pem",
                        certs / "superlink" / "server.key")
    with LocalDeployment(work / "deploy", creds) as deployment:
        deployment.env.update(env_extra)
        seconds_import = import_seconds(deployment.env)
        deployment.start_superlink()
        for i in (1, 2):
            deployment.register_node(certs / "nodes" / f"node-{i}.pub")
            deployment.start_supernode(str(i), certs / "nodes" / f"node-{i}", {
                "data-dir": str(data[i - 1]), "state-dir": str(work / f"state-{i}")})
        deployment.wait_for_nodes(2)
        run_dir = work / "run"
        started = time.monotonic()
        code = deployment.run_app({**TINY_RUN, "num-clients": 2, "num-rounds": rounds,
                                   "run-dir": str(run_dir)})
        total = time.monotonic() - started
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"arm": arm, "flwr_exit": code, "import_client_app_s": round(seconds_import, 2),
            "round_s": [line["wall_seconds"] for line in lines], "flwr_run_s": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in ("eager-corpus", "lazy-corpus"):
        with tempfile.TemporaryDirectory(prefix=f"fedssl-latency-{arm}-") as work:
            result = run_arm(arm, args.rounds, Path(work))
        (out / f"deployment_latency_{arm}.json").write_text(json.dumps(result, indent=2))
        later = result["round_s"][1:]
        rows.append(f"| {arm} | {result['import_client_app_s']:.1f} | {result['round_s'][0]:.1f}"
                    f" | {statistics.median(later):.1f} | {result['flwr_run_s']:.0f} |")
    print("| arm | import client.app (s) | round 1 (s) | later rounds, median (s) "
          "| whole flwr run (s) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
