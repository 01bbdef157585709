"""The coordinator's only public face: a TLS gateway that forwards the Fleet API and nothing else.

A Flower 1.42 SuperLink serves three APIs on one port: Fleet (SuperNodes), Control (`flwr`:
register and unregister nodes, start and stop runs) and Runtime (the ServerApp's). Its open-source
build authenticates no Control caller, and no flag moves Control or Runtime to another address
(docs/control-plane.md). So the SuperLink listens on 127.0.0.1 only, where the operator's `flwr`
reaches it, and this gateway listens on the public interface: it forwards exactly the POST routes
a SuperNode uses (`FLEET_ROUTES`) to the SuperLink over TLS, with the node-authentication
headers untouched (a node signs a timestamp, not the TLS session), and answers everything else
with 404. An outsider holding `ca.crt` reaches no `flwr` command through it.

    fedssl gateway --listen 0.0.0.0:9092 --superlink 127.0.0.1:9093 \\
        --ca ca/ca.crt --certfile superlink/server.pem --keyfile superlink/server.key
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

# Every route of Flower 1.42's Fleet API (flwr/superlink/routers/fleet/router.py): POST only.
FLEET_ROUTES = frozenset({
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
})
# Hop-by-hop headers and those the HTTP client sets itself.
_DROPPED = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding",
                      "te", "trailer", "upgrade", "proxy-connection", "content-encoding"})


def gateway_app(superlink: str, ca_cert: Path) -> Starlette:
    """The ASGI app: Fleet routes forwarded to `superlink` (host:port, TLS verified against
    `ca_cert`), every other request answered 404."""
    client = httpx.AsyncClient(base_url=f"https://{superlink}",
                               verify=ssl.create_default_context(cafile=str(ca_cert)),
                               timeout=httpx.Timeout(None))

    async def fleet(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in FLEET_ROUTES:
            return _refused()
        try:
            upstream = await client.post(
                f"/v1/fleet/{name}", content=await request.body(),
                params=request.query_params,
                headers={k: v for k, v in request.headers.items() if k.lower() not in _DROPPED})
        except httpx.HTTPError as err:  # SuperLink down or restarting: the node retries
            return PlainTextResponse(f"SuperLink unreachable: {type(err).__name__}\n",
                                     status_code=502)
        return Response(upstream.content, status_code=upstream.status_code,
                        headers={k: v for k, v in upstream.headers.items()
                                 if k.lower() not in _DROPPED})

    async def refused(request: Request) -> Response:
        return _refused()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/v1/fleet/{name}", fleet, methods=["POST"]),
                             Route("/{path:path}", refused, methods=methods)],
                     lifespan=lifespan)


def _refused() -> Response:
    return PlainTextResponse("not served here: this gateway forwards the Fleet API only\n",
                             status_code=404)


def serve(listen: str, superlink: str, ca_cert: Path, certfile: Path, keyfile: Path) -> None:
    """Run the gateway until interrupted (TLS with the SuperLink's own certificate)."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    uvicorn.run(gateway_app(superlink, ca_cert), host=host or "0.0.0.0", port=int(port),
                ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), log_level="warning")


def gateway_command(listen: str, superlink: str, ca: str, certfile: str, keyfile: str) -> int:
    """`fedssl gateway`: check the arguments (exit 2 with one line), then serve until stopped."""
    for name, value in (("ca", ca), ("certfile", certfile), ("keyfile", keyfile)):
        if not Path(value).is_file():
            print(f"fedssl gateway: error: --{name} {value} is not a file", file=sys.stderr)
            return 2
    for name, value in (("listen", listen), ("superlink", superlink)):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            print(f"fedssl gateway: error: --{name} {value!r} is not HOST:PORT", file=sys.stderr)
            return 2
    serve(listen, superlink, Path(ca), Path(certfile), Path(keyfile))
    return 0
