"""`fedssl certs`: TLS and node-authentication credentials for a Flower deployment.

    fedssl certs ca --out DIR                                  DIR/ca.crt, DIR/ca.key
    fedssl certs superlink --ca DIR --out DIR --host H [...]   server.pem, server.key
    fedssl certs node NAME --out DIR                           NAME, NAME.pub
    fedssl certs all --out DIR --host H [...] --nodes N        ca/, superlink/, nodes/node-K

Private keys are written 0600 and existing files are never replaced without --force.
Exit codes: 0 written; 2 a usage problem (one line on stderr, nothing written).
Formats and why: server/deployment/credentials.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "fedssl certs"


def add_certs_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `certs` subcommand and its actions to the `fedssl` parser."""
    certs = commands.add_parser(
        "certs", help="make TLS and node-authentication credentials for a deployment")
    actions = certs.add_subparsers(dest="certs_action", required=True)
    ca = actions.add_parser("ca", help="a new certificate authority: ca.crt, ca.key")
    ca.add_argument("--out", required=True, help="folder for ca.crt and ca.key")
    superlink = actions.add_parser(
        "superlink", help="the SuperLink's TLS certificate, signed by the CA: server.pem, "
        "server.key")
    superlink.add_argument("--ca", required=True, help="folder with ca.crt and ca.key")
    superlink.add_argument("--out", required=True, help="folder for server.pem and server.key")
    node = actions.add_parser(
        "node", help="a SuperNode's authentication key pair: NAME (private), NAME.pub")
    node.add_argument("name", help="node name: the key file names (letters, digits, . _ -)")
    node.add_argument("--out", required=True, help="folder for NAME and NAME.pub")
    everything = actions.add_parser(
        "all", help="CA, SuperLink certificate and N node keys in one go")
    everything.add_argument("--out", required=True,
                            help="folder for ca/, superlink/ and nodes/")
    everything.add_argument("--nodes", type=int, default=1,
                            help="number of node key pairs node-1..node-N (default 1)")
    for action in (superlink, everything):
        action.add_argument(
            "--host", action="append", default=[], required=True, metavar="NAME_OR_IP",
            help="DNS name or IP address SuperNodes dial (repeatable). 127.0.0.1 is always "
            "added (the gateway and SuperExec dial the SuperLink there); localhost only if "
            "given")
    for action in (ca, superlink, node, everything):
        action.add_argument("--force", action="store_true", help="replace existing files")


MAX_NODES = 10_000  # key pairs one call writes (each takes a moment; a typo should not hang)


def certs_command(args: argparse.Namespace) -> int:
    """Run one `fedssl certs` action from parsed arguments; return the exit code."""
    # Imported here so `fedssl --help` does not load cryptography.
    from server.deployment.credentials import CredentialError

    try:
        if args.certs_action == "ca":
            written = _ca(Path(args.out), args.force)
        elif args.certs_action == "superlink":
            written = _superlink(Path(args.ca), Path(args.out), args.host, args.force)
        elif args.certs_action == "node":
            written = _nodes([args.name], Path(args.out), args.force)
        else:
            written = _all(Path(args.out), args.host, args.nodes, args.force)
    except CredentialError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. --out under a folder this user may not search
        print(f"{PROG}: error: cannot use {err.filename or args.out}: "
              f"{err.strerror or type(err).__name__}", file=sys.stderr)
        return 2
    for path, role in written.items():
        print(f"wrote {path}  ({role})")
    if args.certs_action == "all":
        print("\n".join(_next_steps(Path(args.out), args.host, args.nodes)))
    return 0


# docs/deploy.md §2: the SuperLink on loopback, `fedssl gateway` the one public port (also
# the gateway's defaults, simulations/cli.py).
PUBLIC_PORT = 9092
LOOPBACK_PORT = 9093
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _next_steps(out: Path, hosts: list[str], nodes: int) -> list[str]:
    """The runbook's commands (docs/deploy.md §2-3) with the files `certs all` wrote (copy
    each file to its machine first)."""
    ca, node = out / "ca" / "ca.crt", out / "nodes" / "node-1"
    cert, key = out / "superlink" / "server.pem", out / "superlink" / "server.key"
    # Hospitals dial a public name; a loopback one only serves a trial on one machine.
    host = next((h for h in hosts if h not in LOOPBACK_HOSTS), hosts[0])
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address needs brackets before :PORT
    return [
        "",
        "next (copy each file to the machine that uses it; adjust the paths; docs/deploy.md):",
        "  coordinator, the SuperLink on loopback only (its Control API authenticates nobody):",
        (f"    flower-superlink --ssl-ca-certfile {ca} --ssl-certfile {cert} "
         f"--ssl-keyfile {key} --enable-supernode-auth --host 127.0.0.1 "
         f"--port {LOOPBACK_PORT} --database /var/lib/fedssl/superlink.db "
         "--disable-runtime-dependency-installation"),
        "  coordinator, the one public port (Fleet API only):",
        (f"    fedssl gateway --listen 0.0.0.0:{PUBLIC_PORT} --superlink 127.0.0.1:"
         f"{LOOPBACK_PORT} --ca {ca} --certfile {cert} --keyfile {key}"),
        (f"  coordinator, flwr against 127.0.0.1:{LOOPBACK_PORT} (a [superlink.fedssl] entry "
         "in $FLWR_HOME/config.toml):"),
        f"    flwr supernode register {node}.pub fedssl"
        + ("   (once per node)" if nodes > 1 else ""),
        "  each hospital:",
        (f"    flower-supernode --superlink {host}:{PUBLIC_PORT} --root-certificates {ca} "
         f"--auth-supernode-private-key {node} --max-retries 10 --max-wait-time 300 "
         "--node-config 'data-dir=\"...\" state-dir=\"...\"'"),
    ]


def _ca(out: Path, force: bool) -> dict[Path, str]:
    from server.deployment import credentials as dc

    cert, key = dc.new_ca()
    files = {out / dc.CA_CERT: (dc.cert_pem(cert), dc.PUBLIC_MODE),
             out / dc.CA_KEY: (dc.key_pem(key), dc.SECRET_MODE)}
    dc.write_files(files, force)
    return {out / dc.CA_CERT: "CA certificate: give to the SuperLink and every SuperNode",
            out / dc.CA_KEY: "CA key, secret: keep offline, needed only to sign certificates"}


def _superlink(ca_dir: Path, out: Path, hosts: list[str], force: bool) -> dict[Path, str]:
    from server.deployment import credentials as dc

    ca_cert, ca_key = dc.load_ca(ca_dir)
    cert, key = dc.new_server_cert(ca_cert, ca_key, hosts)
    files = {out / dc.SERVER_CERT: (dc.cert_pem(cert), dc.PUBLIC_MODE),
             out / dc.SERVER_KEY: (dc.key_pem(key), dc.SECRET_MODE)}
    dc.write_files(files, force)
    return {out / dc.SERVER_CERT: f"SuperLink certificate for {', '.join(hosts)}: "
            "--ssl-certfile",
            out / dc.SERVER_KEY: "SuperLink key, secret: --ssl-keyfile"}


def _nodes(names: list[str], out: Path, force: bool) -> dict[Path, str]:
    from server.deployment import credentials as dc

    files: dict[Path, tuple[bytes, int]] = {}
    roles: dict[Path, str] = {}
    for name in names:
        private, public = dc.node_key_files(dc.new_key(), dc.check_node_name(name))
        files[out / name] = (private, dc.SECRET_MODE)
        files[out / f"{name}.pub"] = (public, dc.PUBLIC_MODE)
        roles[out / name] = "node key, secret, stays on the node: --auth-supernode-private-key"
        roles[out / f"{name}.pub"] = "node public key: flwr supernode register"
    dc.write_files(files, force)
    return roles


def _all(out: Path, hosts: list[str], nodes: int, force: bool) -> dict[Path, str]:
    from server.deployment import credentials as dc

    if not 1 <= nodes <= MAX_NODES:
        raise dc.CredentialError(f"--nodes must be between 1 and {MAX_NODES:,}, not {nodes}")
    # Validate every input and existing file before writing anything.
    for host in hosts:
        dc.parse_host(host)
    names = [f"node-{k}" for k in range(1, nodes + 1)]
    planned = [out / "ca" / dc.CA_CERT, out / "ca" / dc.CA_KEY,
               out / "superlink" / dc.SERVER_CERT, out / "superlink" / dc.SERVER_KEY,
               *(out / "nodes" / n for n in names), *(out / "nodes" / f"{n}.pub" for n in names)]
    dc.refuse_existing(planned, force)
    written = _ca(out / "ca", force)
    written.update(_superlink(out / "ca", out / "superlink", hosts, force))
    written.update(_nodes(names, out / "nodes", force))
    return written
