"""Start Flower's processes on loopback and wait for them, for `fedssl simulate` and the
loopback deployment alike: free ports, an environment with a private FLWR_HOME, the
SuperLink's health check, console scripts from this environment, run settings as TOML.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

APP_DIR = Path(__file__).resolve().parents[2]  # holds pyproject.toml ([tool.flwr.app])
STARTUP_TIMEOUT_S = 60.0


class SimulationError(RuntimeError):
    """A Flower process (the simulation's, or a loopback deployment's) could not start or
    did not finish; the message says where to look."""


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
    """Run settings as the text of a `--run-config` TOML file (checked to parse)."""
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
