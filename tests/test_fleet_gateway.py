"""The gateway's routing, without processes: only the Fleet API's POST routes are forwarded.

tests/test_deployment.py shows the same against a real SuperLink, with `flwr` as the outsider.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from server.deployment.fleet_gateway import FLEET_ROUTES, gateway_app
from simulations.cli import main as fedssl


@pytest.fixture()
def gateway(tmp_path: Path) -> TestClient:
    assert fedssl(["certs", "ca", "--out", str(tmp_path / "ca")]) == 0
    # Upstream is a closed port: a forwarded request fails with 5xx, a refused one is 404.
    return TestClient(gateway_app("127.0.0.1:9", tmp_path / "ca" / "ca.crt"),
                      raise_server_exceptions=False)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/control/register-node"), ("POST", "/v1/control/unregister-node"),
    ("POST", "/v1/control/start-run"), ("POST", "/v1/control/list-nodes"),
    ("POST", "/v1/runtime/acquire-task"), ("GET", "/docs"), ("GET", "/openapi.json"),
    ("GET", "/health"), ("POST", "/v1/fleet/not-a-route"), ("GET", "/v1/fleet/pull-messages"),
    ("POST", "/v1/fleet/../control/start-run"), ("POST", "/v1/fleet/pull-messages/x"),
])
def test_everything_but_the_fleet_routes_is_refused(gateway: TestClient, method: str,
                                                    path: str) -> None:
    response = gateway.request(method, path)
    assert response.status_code == 404
    assert "Fleet API only" in response.text


def test_fleet_routes_are_forwarded(gateway: TestClient) -> None:
    for name in sorted(FLEET_ROUTES):
        response = gateway.post(f"/v1/fleet/{name}", content=b"{}")
        assert response.status_code == 502  # forwarded to the (closed) upstream, not refused
        assert "SuperLink unreachable" in response.text


def test_gateway_command_rejects_bad_addresses(tmp_path: Path, capsys) -> None:
    assert fedssl(["certs", "all", "--out", str(tmp_path), "--host", "127.0.0.1"]) == 0
    files = ["--ca", str(tmp_path / "ca" / "ca.crt"),
             "--certfile", str(tmp_path / "superlink" / "server.pem"),
             "--keyfile", str(tmp_path / "superlink" / "server.key")]
    assert fedssl(["gateway", "--listen", "nohost", *files]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert fedssl(["gateway", "--ca", str(tmp_path / "missing"), "--certfile", "x",
                   "--keyfile", "y"]) == 2
    assert "is not a file" in capsys.readouterr().err
