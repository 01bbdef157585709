"""A real Flower deployment on loopback: TLS SuperLink with node authentication, SuperNodes.

Used by the integration test and the latency benchmark; the same commands, by hand, are the
runbook in docs/deploy.md. Everything runs from this Python environment with a private
FLWR_HOME, free ports on 127.0.0.1 and runtime dependency installation disabled, and every
process started here is stopped by `close()` (SuperLink and SuperNodes detach helpers such as
SuperExec, so those are found as descendants or by the private FLWR_HOME).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from server.deployment.flower_processes import (
    APP_DIR,
    console_script,
    flower_env,
    free_port,
    require_free_port,
    run_config_toml,
    wait_healthy,
)
from server.deployment.process_tree import stop_process_tree

CONNECTION = "fedssl-local"  # the SuperLink connection name in FLWR_HOME/config.toml
# A SuperNode that cannot connect gives up (with the reason in its log) rather than retry
# forever. Smaller than the runbook's 10 tries / 300 s so that the loopback tests end quickly.
MAX_RETRIES, MAX_WAIT_S = 5, 120


@dataclass(frozen=True)
class Credentials:
    """TLS and node-authentication files (as `fedssl certs` writes them)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_certs_dir(cls, certs: Path) -> Credentials:
        """The files in the layout `fedssl certs all --out CERTS` writes."""
        return cls(ca_cert=certs / "ca" / "ca.crt",
                   server_cert=certs / "superlink" / "server.pem",
                   server_key=certs / "superlink" / "server.key")


@dataclass
class LocalDeployment:
    """One SuperLink and any number of SuperNodes, all on 127.0.0.1, all owned by this object."""

    workdir: Path
    credentials: Credentials
    isolation: str = "subprocess"
    port: int = field(default_factory=free_port)
    gateway_port: int = 0  # set by start_gateway: then SuperNodes dial the gateway
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = flower_env(self.flwr_home, self.port, self.port)
        # The `flwr` CLI reaches the SuperLink's Control API through this connection.
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.credentials.ca_cert}"\n'
        )

    def start_superlink(self) -> None:
        """TLS on Fleet, Control and runtime APIs; only registered node keys may connect."""
        creds = self.credentials
        require_free_port(self.port, "SuperLink")
        log = self.logs / "superlink.log"
        process = self._spawn("superlink", [
            console_script("flower-superlink"),
            "--ssl-ca-certfile", str(creds.ca_cert), "--ssl-certfile", str(creds.server_cert),
            "--ssl-keyfile", str(creds.server_key), "--enable-supernode-auth",
            "--host", "127.0.0.1", "--port", str(self.port), "--isolation", self.isolation,
            "--database", str(self.flwr_home / "state.db"),
            "--disable-runtime-dependency-installation",
        ], log)
        context = ssl.create_default_context(cafile=str(creds.ca_cert))
        wait_healthy(process, f"https://127.0.0.1:{self.port}/health", log, context)

    def start_gateway(self) -> int:
        """The public face: `fedssl gateway` forwarding the Fleet API only; returns its port.

        SuperNodes dial it; the operator's `flwr` keeps using the SuperLink on 127.0.0.1.
        """
        creds = self.credentials
        self.gateway_port = free_port()
        require_free_port(self.gateway_port, "gateway")
        self._spawn("gateway", [
            sys.executable, "-m", "simulations.cli", "gateway",
            "--listen", f"127.0.0.1:{self.gateway_port}", "--superlink", f"127.0.0.1:{self.port}",
            "--ca", str(creds.ca_cert), "--certfile", str(creds.server_cert),
            "--keyfile", str(creds.server_key),
        ], self.logs / "gateway.log")
        wait_listening(self.processes[-1], self.gateway_port, self.logs / "gateway.log")
        return self.gateway_port

    def register_node(self, public_key: Path) -> int:
        """`flwr supernode register KEY.pub`: admit one node key; returns its node id."""
        result = self.flwr("supernode", "register", str(public_key), CONNECTION,
                           "--format", "json")
        return int(json.loads(result.stdout)["node-id"])

    def start_supernode(
        self, name: str, private_key: Path, node_config: dict[str, Any],
        ca_cert: Path | None = None, insecure: bool = False,
    ) -> subprocess.Popen[Any]:
        """A SuperNode that trusts only the run's CA (or `ca_cert`) and authenticates with
        `private_key`; it gives up after MAX_RETRIES failed connection attempts, with the
        reason in its log, instead of retrying forever (`insecure`: no TLS, for the test that
        shows such a node is turned away)."""
        config = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
        port = free_port()
        require_free_port(port, f"SuperNode {name}")
        tls = ["--insecure"] if insecure else [
            "--root-certificates", str(ca_cert or self.credentials.ca_cert)]
        return self._spawn(f"supernode-{name}", [
            console_script("flower-supernode"), *tls,
            "--auth-supernode-private-key", str(private_key),
            "--superlink", f"127.0.0.1:{self.gateway_port or self.port}", "--port", str(port),
            "--max-retries", str(MAX_RETRIES), "--max-wait-time", str(MAX_WAIT_S),
            "--isolation", self.isolation, "--node-config", config,
        ], self.logs / f"supernode-{name}.log")

    def node_ids(self) -> list[int]:
        """The registered nodes' ids (the operator's view, through the loopback SuperLink)."""
        nodes = json.loads(self.flwr("supernode", "list", CONNECTION, "--format", "json").stdout)
        return [int(n["node-id"]) for n in nodes.get("nodes", [])]

    def online_nodes(self) -> int:
        """How many registered SuperNodes the SuperLink sees online."""
        nodes = json.loads(self.flwr("supernode", "list", CONNECTION, "--format", "json").stdout)
        return sum(1 for n in nodes.get("nodes", []) if n.get("status") == "online")

    def wait_for_nodes(self, expected: int, timeout_s: float = 60.0) -> None:
        """Block until `expected` SuperNodes are online (or raise with where to look)."""
        deadline = time.monotonic() + timeout_s
        while self.online_nodes() < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {expected} SuperNodes online after "
                                   f"{timeout_s:.0f}s; see {self.logs}")
            time.sleep(0.5)

    def run_app(self, run_config: dict[str, Any], timeout_s: float = 900) -> int:
        """`flwr run APP fedssl-local --stream` with these settings; returns its exit code."""
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(run_config_toml(run_config))
        with open(self.logs / "flwr-run.log", "a") as log:
            process = subprocess.run(
                [console_script("flwr"), "run", str(APP_DIR), CONNECTION, "--stream",
                 "--run-config", str(overrides)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                check=False,
            )
        return process.returncode

    def flwr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `flwr` CLI command against this deployment (raises on failure)."""
        result = subprocess.run([console_script("flwr"), *args], env=self.env, text=True,
                                capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}): "
                               f"{(result.stdout + result.stderr)[-1500:]}")
        return result

    def close(self) -> list[int]:
        """Stop every process this deployment started; returns the PIDs signalled."""
        stopped: list[int] = []
        for process in reversed(self.processes):
            stopped += stop_process_tree(process.pid, marker=("FLWR_HOME", str(self.flwr_home)))
            process.wait(timeout=30)
        self.processes.clear()
        return stopped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, command: list[str], log: Path) -> subprocess.Popen[Any]:
        with open(log, "ab") as handle:  # the child keeps its own descriptor
            process = subprocess.Popen(command, env=self.env, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process


def wait_listening(process: subprocess.Popen[Any], port: int, log: Path,
                   timeout_s: float = 60.0) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before listening on "
                               f"127.0.0.1:{port}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s; see {log}")
