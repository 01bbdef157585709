"""Run the fedssl Flower App in Flower's simulation engine, and clean up every process.

`flwr run` would start a detached SuperLink on fixed ports and leave it running. Instead this
starts `flower-superlink --simulation` itself, on free loopback ports, with its own FLWR_HOME,
points `flwr run` at it through Flower's local-SuperLink port variables, and at the end stops
the SuperLink and every process it spawned. Flower detaches some of those (SuperExec runs in a
new session), so they are found as descendants and, for orphans, by their private FLWR_HOME.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from simulations.run_watchdog import start_watchdog


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
