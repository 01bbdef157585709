"""Run the fedssl Flower App in Flower's simulation engine, and clean up every process.

`flwr run` would start a detached SuperLink on fixed ports and leave it running. Instead this
starts `flower-superlink --simulation` itself, on free loopback ports, with its own FLWR_HOME,
points `flwr run` at it through Flower's local-SuperLink port variables, and at the end stops
the SuperLink and every process it spawned. Flower detaches some of those (SuperExec runs in a
new session), so they are found as descendants and, for orphans, by their private FLWR_HOME.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

from simulations.process_tree import stop_process_tree
from simulations.run_watchdog import start_watchdog

APP_DIR = Path(__file__).resolve().parent.parent  # holds pyproject.toml ([tool.flwr.app])
STARTUP_TIMEOUT_S = 60.0


class SimulationError(RuntimeError):
    """The simulation could not start or did not finish; the message says where to look."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_free_port(port: int, what: str) -> None:
    """SimulationError naming `port` if 127.0.0.1:`port` cannot be bound right now.

    Flower would otherwise start, fail to bind, and exit with its own traceback in a log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC/uvicorn bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            raise SimulationError(f"port {port} on 127.0.0.1 (for the {what}) is already in "
                                  f"use ({err.strerror}): stop what holds it, or choose "
                                  "another port") from None


def flower_env(flwr_home: Path, http_port: int, control_port: int) -> dict[str, str]:
    """Environment for Flower commands: private FLWR_HOME and ports, no downloads."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # it would download torch
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            # Flower spawns flower-superexec, flwr-serverapp, ... by name.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


@contextmanager
def simulation_superlink(log_file: Path) -> Iterator[dict[str, str]]:
    """A private simulation SuperLink; yields the env for `flwr` commands; kills it on exit."""
    flwr_home = Path(tempfile.mkdtemp(prefix="fedssl-flwr-home-"))
    http_port, control_port = free_port(), free_port()
    require_free_port(http_port, "simulation SuperLink")
    require_free_port(control_port, "simulation SuperLink's Control API")
    env = flower_env(flwr_home, http_port, control_port)
    command = [
        console_script("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--control-api-address", f"127.0.0.1:{control_port}",
        "--host", "127.0.0.1", "--port", str(http_port),
        "--database", str(flwr_home / "state.db"),
    ]
    # Whatever kills this process (SIGKILL included), the watchdog stops what it started.
    watchdog = start_watchdog(flwr_home)
    log_handle = open(log_file, "ab")
    process = subprocess.Popen(
        command, env=env, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_healthy(process, f"http://127.0.0.1:{http_port}/health", log_file)
        yield env
    finally:
        stop_process_tree(process.pid, marker=("FLWR_HOME", str(flwr_home)))
        process.wait()
        log_handle.close()
        shutil.rmtree(flwr_home, ignore_errors=True)
        watchdog.kill()  # its work is done
        watchdog.wait()


def run_app(
    env: dict[str, str],
    run_config: dict[str, Any],
    num_supernodes: int,
    log_file: Path,
    echo: Callable[[str], None],
    cpus_per_client: int = 1,
) -> int:
    """`flwr run APP local --stream` with the full run config; returns its exit code.

    Every output line goes to `log_file`; `echo` sees each line (to filter what users see).
    """
    overrides = Path(env["FLWR_HOME"]) / "run-config.toml"
    overrides.write_text(run_config_toml(run_config))
    command = [
        console_script("flwr"), "run", str(APP_DIR), "local", "--stream",
        "--run-config", str(overrides),
        "--federation-config",
        f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}",
    ]
    with open(log_file, "a") as log:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                echo(line.rstrip("\n"))
            return process.wait()
        finally:
            # On Ctrl-C/SIGTERM `flwr run` may not have been signalled itself: stop it too.
            stop_process_tree(process.pid, grace_s=5.0)


def wait_healthy(
    process: subprocess.Popen[Any], url: str, log_file: Path,
    context: ssl.SSLContext | None = None,
) -> None:
    """Wait until a SuperLink answers `url` (its /health endpoint), or fail clearly."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SimulationError(
                f"flower-superlink exited with code {process.returncode}; see {log_file}"
            )
        try:
            with urlopen(url, timeout=0.5, context=context) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.3)
    raise SimulationError(f"flower-superlink did not become ready in {STARTUP_TIMEOUT_S:.0f}s")


def console_script(name: str) -> str:
    """A console script from this Python environment (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_config_toml(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
        elif isinstance(value, float):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {value}")
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # fail here, not inside Flower, if anything is malformed
    return text
