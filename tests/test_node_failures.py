"""Node failures in a real deployment on loopback (TLS SuperLink, three SuperNodes, each
ClientApp a real `flwr-clientapp` process), both in round 1 of a 2-round run:

* crash: node a's ClientApp is SIGKILLed as soon as its write-ahead ledger entry for round 1
  is on disk (mid local training). The round goes on with the others; Flower's liveness check
  (no ClientApp heartbeat for 2 x 30 s) or the round-timeout names a; a's ledger keeps the
  unconfirmed entry; in round 2 a trains again (its SuperNode starts a fresh ClientApp, no
  restart needed) and its ε continues from the crashed round's, never lower; `fedssl audit`
  passes and names round 1 as over-counted;
* straggler: node b's SuperExec (which starts b's ClientApps) is SIGSTOPped before the run,
  while b's SuperNode stays online, so b takes round 1's message but never answers it: it
  misses round-timeout, the round proceeds with node c, the server logs b as a dropout, and
  b is SIGCONTed once the round closed (it trains again in round 2).
Every process the test starts is stopped by PID, and the test checks none was left behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from simulation_runs import TINY_RUN, flower_processes

from common.data.demo_text import demo_splits
from common.privacy.accounting import REPLACE_ONE, epsilon_of
from common.privacy.ledger import LedgerEntry, LedgerError, PrivacyLedger, unconfirmed
from common.run_config import RunConfig
from server.deployment.local_deployment import Credentials, LocalDeployment
from simulations.cli import main as fedssl

# Slow tier (`make test-slow`): a TLS deployment with a crashed and a frozen node: ~3 min.
pytestmark = pytest.mark.slow

NODES = ("a", "b", "c")
RECORDS = 300
STEPS = 20  # enough DP-SGD steps that training outlasts the poll that catches it
# A healthy round of 3 subprocess ClientApps takes ~20 s on 2 quiet cores (up to ~100 s when
# other work shares them); the straggler's round lasts exactly this long, and Flower's own
# liveness check (2 x 30 s) must fit inside it.
ROUND_TIMEOUT = 75.0
SETTINGS = {**TINY_RUN, "num-clients": 3, "num-rounds": 2, "local-steps": STEPS,
            "noise-multiplier": 1.0, "round-timeout": ROUND_TIMEOUT, "min-clients": 1}
POLL_S = 0.02


def _tree(process: subprocess.Popen[Any]) -> list[psutil.Process]:
    try:
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _clientapps(process: subprocess.Popen[Any], since: float) -> list[psutil.Process]:
    """The node's `flwr-clientapp` processes started after `since` (time.time())."""
    found = []
    for proc in _tree(process)[1:]:
        try:
            if "flwr-clientapp" in " ".join(proc.cmdline()) and proc.create_time() >= since:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _entries(path: Path) -> list[LedgerEntry]:
    try:
        return PrivacyLedger(path).entries() if path.exists() else []
    except LedgerError:  # created but no table yet
        return []


def _committed_rounds(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait(condition, what: str, run: threading.Thread, timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not run.is_alive() or time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic()


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    before = flower_processes()
    started = time.monotonic()
    certs = root / "certs"
    assert fedssl(["certs", "all", "--out", str(certs), "--host", "127.0.0.1",
                   "--nodes", "3"]) == 0
    credentials = Credentials.from_certs_dir(certs)
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **SETTINGS})
    texts = demo_splits(config).client_texts
    state = {n: root / f"state-{n}" for n in NODES}
    run_dir = root / "run"
    out: dict[str, Any] = {"root": root, "run_dir": run_dir, "state": state, "events": []}
    deployment = LocalDeployment(root / "work", credentials)
    supernodes: dict[str, subprocess.Popen[Any]] = {}
    stopped: list[psutil.Process] = []
    try:
        deployment.start_superlink()
        ids = {}
        for i, name in enumerate(NODES, start=1):
            folder = root / f"data-{name}"
            folder.mkdir()
            (folder / "notes.txt").write_text("\n".join(texts[i - 1][:RECORDS]) + "\n")
            ids[name] = deployment.register_node(certs / "nodes" / f"node-{i}.pub")
            supernodes[name] = deployment.start_supernode(name, certs / "nodes" / f"node-{i}", {
                "data-dir": str(folder), "state-dir": str(state[name]),
                "node-name": f"hospital-{name}"})
        out["ids"] = ids
        deployment.wait_for_nodes(3)
        code: dict[str, int] = {}
        run = threading.Thread(target=lambda: code.setdefault("flwr", deployment.run_app(
            {**SETTINGS, "run-dir": str(run_dir)}, timeout_s=1200)))
        since = time.time()  # every ClientApp of this run starts after this
        t0 = time.monotonic()

        def event(text: str) -> None:
            out["events"].append(f"t={time.monotonic() - t0:6.1f}s {text}")

        for proc in _tree(supernodes["b"])[1:]:  # straggler: b's SuperExec, frozen
            if "flower-superexec" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGSTOP)
                stopped.append(proc)
        assert stopped, "node b has no flower-superexec to freeze"
        event(f"SIGSTOP b's flower-superexec {[p.pid for p in stopped]}")
        run.start()

        # Crash: SIGKILL a's ClientApp once its round-1 write-ahead entry is durable.
        _wait(lambda: any(e.round == 1 for e in _entries(state["a"] / "ledger.sqlite")),
              "a's round-1 write-ahead entry", run)
        victims = _clientapps(supernodes["a"], since)
        for proc in victims:
            proc.send_signal(signal.SIGKILL)
        out["killed"] = [p.pid for p in victims]
        out["a_after_kill"] = _entries(state["a"] / "ledger.sqlite")
        event(f"SIGKILL a's flwr-clientapp {out['killed']} (its round-1 write-ahead entry "
              "is in its ledger)")
        _wait(lambda: _committed_rounds(run_dir) >= 1, "round 1", run)
        event("round 1 committed")
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
        event(f"SIGCONT b's flower-superexec {[p.pid for p in stopped]}")
        stopped.clear()
        run.join(timeout=1200)
        event(f"flwr run exited with {code.get('flwr')}")
        out["flwr_exit"] = code.get("flwr")
    finally:
        for proc in stopped:  # never leave a frozen process behind
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
        out["logs"] = deployment.logs
        deployment.close()
        out["seconds"] = time.monotonic() - started
        leftovers = flower_processes() - before
        out["leftovers"] = leftovers
        for pid in leftovers:
            subprocess.run(["kill", "-9", str(pid)], check=False)
    print("\n".join(out["events"]))
    return out


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _log_tail(out: dict) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}"
                     for p in sorted(Path(out["logs"]).glob("*.log")))


def _audit(path: Path, capsys) -> tuple[int, str]:
    """`fedssl audit PATH` (in-process: the CLI entry point, without a second torch import)."""
    code = fedssl(["audit", str(path)])
    return code, capsys.readouterr().out


def test_the_run_went_on_with_the_other_nodes(failures):
    assert failures.get("killed"), "no flwr-clientapp of node a was found to kill"
    assert failures["flwr_exit"] == 0, _log_tail(failures)
    run_dir = failures["run_dir"]
    assert (run_dir / "summary.json").is_file(), _log_tail(failures)
    faulty, after = _lines(run_dir)
    assert (faulty["round"], after["round"]) == (1, 2)
    # Round 1 went on with c alone. b (frozen) missed round-timeout: a dropout. a (killed) is
    # named by Flower's liveness check ("ClientApp stopped responding", after 2 x 30 s
    # without heartbeat) or, if that came later, as a dropout too.
    ids = failures["ids"]
    assert f"node-{ids['b']}" in faulty["dropouts"]
    assert faulty["wall_seconds"] >= ROUND_TIMEOUT
    failed = {r["node"]: r["reason"] for r in faulty["rejected"]}
    failed.update({node: "no reply within round-timeout" for node in faulty["dropouts"]})
    assert set(failed) == {f"node-{ids['a']}", f"node-{ids['b']}"}, faulty
    assert [c["node"] for c in faulty["clients"]] == ["hospital-c"]
    assert not faulty["skipped"]
    assert "hospital-a" in {c["node"] for c in after["clients"]}
    log = (Path(failures["logs"]) / "flwr-run.log").read_text()
    (dropped,) = [x for x in log.splitlines()
                  if "round 1: no reply within round-timeout from" in x][:1]
    assert f"node-{ids['b']}" in dropped
    assert (f"round 1: node-{ids['a']} failed: " in log or f"node-{ids['a']}" in dropped)


def test_the_crashed_round_stays_in_the_ledger_unconfirmed(failures):
    after_kill = failures["a_after_kill"]
    assert [(e.round, e.is_confirmation) for e in after_kill] == [(1, False)]
    ledger = PrivacyLedger.open(failures["state"]["a"] / "ledger.sqlite", "hospital-a")
    assert ledger.entries()[:1] == after_kill  # nothing rewritten after the crash
    assert [e.round for e in ledger.spends()] == [1, 2]
    assert [e.round for e in unconfirmed(ledger.entries())] == [1]


def test_epsilon_continues_from_the_crashed_round(failures):
    ledger = PrivacyLedger.open(failures["state"]["a"] / "ledger.sqlite", "hospital-a")
    crashed, after = ledger.spends()
    rate = crashed.sample_rate
    assert crashed.epsilon == epsilon_of([(1.0, rate, STEPS)], 1e-5, REPLACE_ONE)
    assert after.epsilon == epsilon_of([(1.0, rate, STEPS)] * 2, 1e-5, REPLACE_ONE)
    assert crashed.epsilon < after.epsilon  # the crash was counted, never lost
    (reply,) = [c for c in _lines(failures["run_dir"])[1]["clients"]
                if c["node"] == "hospital-a"]
    assert reply["epsilon"] == after.epsilon
    # The run's reports come from the ledger: a's crashed round is in its ε there too.
    summary = json.loads((failures["run_dir"] / "summary.json").read_text())["privacy"]
    assert summary["per_client"]["hospital-a"] == after.epsilon
    for name in ("b", "c"):
        own = PrivacyLedger.open(failures["state"][name] / "ledger.sqlite",
                                 f"hospital-{name}").spends()
        assert summary["per_client"][f"hospital-{name}"] == own[-1].epsilon


def test_audit_passes_and_reports_the_crashed_round_as_over_counted(failures, capsys):
    for path in (failures["state"]["a"], failures["run_dir"]):
        code, out = _audit(path, capsys)
        assert code == 0, out
        assert "round 1 (over-counted)" in out
        assert ("node 'hospital-a': 1 crashed round(s) (write-ahead entry never confirmed): "
                "round 1 of run") in out
        assert "over-count, never an under-count" in out
    for name in ("b", "c"):
        assert _audit(failures["state"][name], capsys)[0] == 0


def test_every_started_process_was_stopped(failures):
    assert not failures["leftovers"]
    print(f"node failure test wall time: {failures['seconds']:.0f}s")
