"""A real deployment on loopback: TLS SuperLink with node authentication, SuperNodes with their
own data folders, two rounds of the real app, a node with an unregistered key refused, and
nodes with a wrong CA, or without TLS (with and without a key), giving up with the reason logged.

Everything the test starts (SuperLink, SuperNodes, their SuperExec and ClientApp processes) is
stopped by PID at the end, and the test checks that nothing was left behind.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from simulation_runs import ROOT, TINY_RUN, fedssl_in_process, flower_processes

from common.data.demo_text import demo_splits
from common.privacy.ledger import PrivacyLedger
from common.run_config import RunConfig
from server.deployment.flower_processes import console_script, flower_env, free_port
from server.deployment.local_deployment import (
    MAX_RETRIES,
    MAX_WAIT_S,
    Credentials,
    LocalDeployment,
)
from simulations.cli import main as fedssl

RECORDS_PER_NODE = 400
# Flower logs "Exit Code: 305" (failed to activate SuperNode) for an unregistered key; the
# flower-supernode process itself then exits with status 1.
UNREGISTERED_LOG = "Exit Code: 305"
# A node without a key that dials the TLS gateway in plain HTTP: the gateway closes each
# connection unanswered; after MAX_RETRIES retries Flower gives up with exit code 305 and the
# transport error's text (Flower 1.42's fleet_http_connection and http_retry).
NO_TLS_GIVE_UP = ("Giving up reconnection after", "Exit Code: 305",
                  "Failed to initialize the connection to the SuperLink")
NO_TLS_REASONS = ("Server disconnected without sending a response", "Connection reset by peer")


def _write_data_folders(root: Path) -> dict[str, Path]:
    """Three hospitals' folders from the embedded corpus: .txt, .jsonl + .csv, blank-only."""
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **TINY_RUN, "num-clients": 2})
    texts = [t[:RECORDS_PER_NODE] for t in demo_splits(config).client_texts]
    folders = {name: root / f"data-{name}" for name in ("a", "b", "c")}
    for folder in folders.values():
        folder.mkdir()
    (folders["a"] / "notes.txt").write_text("\n".join(texts[0]) + "\n")
    half = len(texts[1]) // 2
    with open(folders["b"] / "part1.jsonl", "w") as handle:
        handle.writelines(json.dumps({"text": text}) + "\n" for text in texts[1][:half])
    with open(folders["b"] / "part2.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts[1][half:]))
    (folders["c"] / "empty.txt").write_text("\n \n\n")  # only blank lines: unusable
    return folders


@pytest.fixture(scope="module")
def deployment_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    before = flower_processes()
    started = time.monotonic()
    certs = root / "certs"
    assert fedssl(["certs", "all", "--out", str(certs), "--host", "127.0.0.1",
                   "--nodes", "4"]) == 0
    credentials = Credentials.from_certs_dir(certs)
    node_key = {name: certs / "nodes" / f"node-{i}" for i, name in enumerate("abcx", start=1)}
    folders = _write_data_folders(root)
    outcome: dict = {"root": root}
    deployment = LocalDeployment(root / "work", credentials)
    try:
        deployment.start_superlink()
        outcome["gateway_port"] = deployment.start_gateway()
        for name in "abc":  # node x's key is never registered
            deployment.register_node(node_key[name].with_suffix(".pub"))
        for name in "abc":
            deployment.start_supernode(name, node_key[name], {
                "data-dir": str(folders[name]), "state-dir": str(root / f"state-{name}"),
                "node-name": f"hospital-{name}",
            })
        intruder = deployment.start_supernode("x", node_key["x"], {
            "data-dir": str(folders["a"]), "state-dir": str(root / "state-x")})
        # A node that trusts another CA, and one that dials without TLS: both give up at
        # once with the reason in their logs (no more silent retrying forever).
        other_ca = root / "other-certs"
        assert fedssl(["certs", "ca", "--out", str(other_ca)]) == 0
        wrong_ca = deployment.start_supernode("wrong-ca", node_key["a"], {
            "data-dir": str(folders["a"]), "state-dir": str(root / "state-w")},
            ca_cert=other_ca / "ca.crt")
        plain = deployment.start_supernode("insecure", node_key["a"], {
            "data-dir": str(folders["a"]), "state-dir": str(root / "state-i")}, insecure=True)
        keyless = _start_keyless_plain_node(deployment, {
            "data-dir": str(folders["a"]), "state-dir": str(root / "state-k")})
        deployment.wait_for_nodes(3)
        outcome["intruder_exit"] = intruder.wait(timeout=60)
        outcome["wrong_ca_exit"] = wrong_ca.wait(timeout=120)
        outcome["insecure_exit"] = plain.wait(timeout=120)
        outcome["online"] = deployment.online_nodes()
        outcome["outsider"] = _outsider_attempts(root, certs, outcome["gateway_port"],
                                                 node_key["x"].with_suffix(".pub"),
                                                 deployment.node_ids())
        outcome["online_after_outsider"] = deployment.online_nodes()
        run_dir = root / "run"
        outcome["flwr_exit"] = deployment.run_app({
            **TINY_RUN, "num-clients": 2, "num-rounds": 2, "run-dir": str(run_dir)})
        outcome["run_dir"] = run_dir
        # Its retries (~15 s of backoff) overlap the steps above, so waiting here adds ~nothing;
        # it never connects, so it cannot take part in the run.
        outcome["keyless_exit"] = keyless.wait(timeout=MAX_WAIT_S + 60)
    finally:
        outcome["logs"] = deployment.logs
        deployment.close()
        outcome["seconds"] = time.monotonic() - started
        leftovers = flower_processes() - before
        outcome["leftovers"] = leftovers
        for pid in leftovers:
            subprocess.run(["kill", "-9", str(pid)], check=False)
    return outcome


def _start_keyless_plain_node(deployment: LocalDeployment,
                              node_config: dict[str, str]) -> subprocess.Popen[str]:
    """The issue's case: `--insecure` and no node key (so no exit 303 before dialing), against
    the TLS gateway, with the bounded retries every node of the deployment gets. Added to the
    deployment's processes, so `close()` stops it by PID with the others."""
    config = " ".join(f'{k}="{v}"' for k, v in node_config.items())
    with open(deployment.logs / "supernode-keyless.log", "ab") as log:
        process = subprocess.Popen([
            console_script("flower-supernode"), "--insecure",
            "--superlink", f"127.0.0.1:{deployment.gateway_port}", "--port", str(free_port()),
            "--max-retries", str(MAX_RETRIES), "--max-wait-time", str(MAX_WAIT_S),
            "--isolation", deployment.isolation, "--node-config", config,
        ], env=deployment.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deployment.processes.append(process)
    return process


def _outsider_attempts(root: Path, certs: Path, gateway_port: int, key: Path,
                       node_ids: list[int]) -> dict[str, subprocess.CompletedProcess[str]]:
    """What an outsider holding only ca.crt (every hospital has it) can do through the
    gateway, the coordinator's only public port: register a node key, start its own app,
    unregister a hospital, list the federation's nodes."""
    home = root / "outsider-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "coordinator"\n\n[superlink.coordinator]\n'
        f'address = "127.0.0.1:{gateway_port}"\n'
        f'root-certificates = "{certs / "ca" / "ca.crt"}"\n')
    app = root / "outsider-app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "tests", "*.egg-info", "__pycache__"))
    env = flower_env(home, 0, 0)
    attempts = {
        "register": ["supernode", "register", str(key), "coordinator"],
        "unregister": ["supernode", "unregister", str(node_ids[0]), "coordinator"],
        "list": ["supernode", "list", "coordinator"],
        "run": ["run", str(app), "coordinator"],
    }
    # All four at once (each is refused on its own; none waits for another), each stopped by
    # PID if it has not exited when the test moves on.
    running = {name: subprocess.Popen([console_script("flwr"), *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, args in attempts.items()}
    results = {}
    try:
        for name, process in running.items():
            stdout, stderr = process.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode,
                                                        stdout, stderr)
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _log_tail(outcome: dict) -> str:
    logs = sorted(Path(outcome["logs"]).glob("*.log"))
    return "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in logs)


def test_unregistered_node_key_is_refused(deployment_run):
    assert deployment_run["intruder_exit"] != 0, _log_tail(deployment_run)
    log = (Path(deployment_run["logs"]) / "supernode-x.log").read_text()
    assert UNREGISTERED_LOG in log and "Failed to activate SuperNode" in log
    assert deployment_run["online"] == 3  # a, b, c; never x


def test_nodes_with_a_wrong_ca_or_no_tls_give_up_with_the_reason_in_their_log(deployment_run):
    logs = Path(deployment_run["logs"])
    assert deployment_run["wrong_ca_exit"] != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (logs / "supernode-wrong-ca.log").read_text()
    # With a node key, Flower refuses --insecure before dialing (node auth needs TLS).
    assert deployment_run["insecure_exit"] != 0
    assert "Exit Code: 303" in (logs / "supernode-insecure.log").read_text()


def test_a_node_without_tls_or_key_gives_up_within_its_retries_with_the_reason(deployment_run):
    """The issue's case: `--insecure` without a key once retried forever and left no trace at
    the SuperLink. With the runbook's bounded retries it exits on its own, its log saying it
    gave up and why (the TLS gateway closed every plain-HTTP request unanswered)."""
    assert deployment_run["keyless_exit"] != 0
    log = (Path(deployment_run["logs"]) / "supernode-keyless.log").read_text()
    assert "Option `--insecure` was set" in log
    for line in NO_TLS_GIVE_UP:
        assert line in log, log[-3000:]
    assert f"and {MAX_RETRIES + 1} tries" in log, log[-3000:]
    assert any(reason in log for reason in NO_TLS_REASONS), log[-3000:]
    assert deployment_run["online"] == 3  # never counted as a node


@pytest.mark.parametrize("attempt", ["register", "unregister", "list", "run"])
def test_an_outsider_with_the_ca_reaches_no_control_command(deployment_run, attempt):
    """The SuperLink listens on 127.0.0.1 only; the gateway forwards the Fleet API alone, so
    register, unregister, list and run through it all fail — and the federation is intact."""
    result = deployment_run["outsider"][attempt]
    assert result.returncode != 0, result.stdout + result.stderr
    assert "404 Not Found" in result.stdout + result.stderr  # refused by the gateway itself
    assert deployment_run["online_after_outsider"] == 3


def test_two_rounds_ran_with_local_data_and_a_bad_folder_did_not_stop_them(deployment_run):
    run_dir = deployment_run["run_dir"]
    assert deployment_run["flwr_exit"] == 0, _log_tail(deployment_run)
    assert (run_dir / "summary.json").is_file(), _log_tail(deployment_run)
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for line in rounds:
        assert sorted(c["node"] for c in line["clients"]) == ["hospital-a", "hospital-b"]
        assert {c["num-examples"] for c in line["clients"]} == {RECORDS_PER_NODE}
        (error,) = line["rejected"]  # hospital c replied with an error status, no crash
        assert error["node"] == "hospital-c" and "blank-only" in error["reason"]
        assert "\n \n" not in error["reason"]  # no record content in errors


def test_each_node_kept_its_own_ledger_and_the_run_audits_clean(deployment_run):
    root, run_dir = deployment_run["root"], deployment_run["run_dir"]
    for name in "ab":
        ledger = PrivacyLedger.open(root / f"state-{name}" / "ledger.sqlite",
                                    f"hospital-{name}")
        assert [e.round for e in ledger.spends()] == [1, 2]
        assert [e.round for e in ledger.entries() if e.is_confirmation] == [1, 2]
    assert not (root / "state-c" / "ledger.sqlite").exists() or not PrivacyLedger.open(
        root / "state-c" / "ledger.sqlite", "hospital-c").entries()
    code, out, err = fedssl_in_process("audit", str(run_dir))
    assert code == 0, out + err


def test_every_started_process_was_stopped(deployment_run):
    assert not deployment_run["leftovers"]
    print(f"deployment integration test wall time: {deployment_run['seconds']:.0f}s")
