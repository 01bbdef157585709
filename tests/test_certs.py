"""`fedssl certs`: files, permissions, certificate chain and SANs, key formats Flower loads, TLS."""

from __future__ import annotations

import argparse
import datetime
import importlib
import ipaddress
import os
import socket
import ssl
import stat
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from server.deployment import credentials as dc
from simulations.cli import main

HOSTS = ["127.0.0.1", "link.example.org", "::1"]


@pytest.fixture(scope="module")
def creds(tmp_path_factory) -> Path:
    """One `fedssl certs all` output with two nodes."""
    out = tmp_path_factory.mktemp("creds")
    args = ["certs", "all", "--out", str(out), "--nodes", "2"]
    for host in HOSTS:
        args += ["--host", host]
    assert main(args) == 0
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load(creds: Path) -> tuple[x509.Certificate, x509.Certificate]:
    ca = x509.load_pem_x509_certificate((creds / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((creds / "superlink" / "server.pem").read_bytes())
    return ca, server


def _verify(ca: x509.Certificate, server: x509.Certificate, name: x509.GeneralName) -> None:
    now = datetime.datetime.now(datetime.UTC)
    verifier = PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(name)
    verifier.verify(server, [])


def test_all_writes_every_file_with_owner_only_private_keys(creds):
    secret = [creds / "ca" / "ca.key", creds / "superlink" / "server.key",
              creds / "nodes" / "node-1", creds / "nodes" / "node-2"]
    public = [creds / "ca" / "ca.crt", creds / "superlink" / "server.pem",
              creds / "nodes" / "node-1.pub", creds / "nodes" / "node-2.pub"]
    for path in secret:
        assert _mode(path) == 0o600, path
    for path in public:
        assert path.is_file() and not _mode(path) & 0o022, path
    # No temporary files left behind.
    assert sorted(p.name for p in (creds / "nodes").iterdir()) == [
        "node-1", "node-1.pub", "node-2", "node-2.pub"]


def test_server_certificate_verifies_against_the_ca_for_every_host(creds):
    ca, server = _load(creds)
    _verify(ca, server, x509.DNSName("link.example.org"))
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("::1")))
    with pytest.raises(VerificationError):
        _verify(ca, server, x509.DNSName("localhost"))  # not asked for, so not included
    other_ca, _ = dc.new_ca()
    with pytest.raises(VerificationError):
        _verify(other_ca, server, x509.DNSName("link.example.org"))


def test_server_certificate_sans_usage_and_validity(creds):
    ca, server = _load(creds)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.UTC)
    for cert in (ca, server):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert server.not_valid_after_utc - now > datetime.timedelta(days=365)
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)


def test_node_keys_load_as_flower_loads_them(creds):
    for name in ("node-1", "node-2"):
        private_path = creds / "nodes" / name
        public_path = creds / "nodes" / f"{name}.pub"
        public = serialization.load_ssh_public_key(public_path.read_bytes())
        private = serialization.load_ssh_private_key(private_path.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        assert public == private.public_key()
        assert public_path.read_text().rstrip("\n").endswith(f" {name}")
        # The functions flower-supernode and `flwr supernode register` call (they exit the
        # process on a key they reject).
        supernode = importlib.import_module("flwr.supernode.cli.flower_supernode")
        _, derived = supernode._try_setup_client_authentication(argparse.Namespace(
            auth_supernode_private_key=str(private_path), auth_supernode_public_key=None))
        assert derived == public
        register = importlib.import_module("flwr.cli.supernode.register")
        assert register.try_load_public_key(public_path)
    one = serialization.load_ssh_public_key((creds / "nodes" / "node-1.pub").read_bytes())
    two = serialization.load_ssh_public_key((creds / "nodes" / "node-2.pub").read_bytes())
    assert one != two


def test_tls_handshake_with_a_client_that_trusts_only_the_ca(creds):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # What uvicorn does with flower-superlink's --ssl-certfile/--ssl-keyfile.
    server_ctx.load_cert_chain(creds / "superlink" / "server.pem",
                               creds / "superlink" / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(creds / "ca" / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(2)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                try:
                    conn, _ = listener.accept()
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (OSError, ssl.SSLError):
                    pass  # the second client is meant to fail its handshake

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
              client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
            assert tls.recv(2) == b"ok"
        # The certificate names only the hosts asked for: "localhost" was not.
        with (socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
              pytest.raises(ssl.SSLCertVerificationError)):
            client_ctx.wrap_socket(raw, server_hostname="localhost")
        thread.join(timeout=2)


def test_grpc_channel_connects_with_flowers_credential_calls(creds):
    # flower-superlink: grpc.ssl_server_credentials(((key, cert),), root_certificates=ca).
    ca = (creds / "ca" / "ca.crt").read_bytes()
    credentials = grpc.ssl_server_credentials(
        (((creds / "superlink" / "server.key").read_bytes(),
          (creds / "superlink" / "server.pem").read_bytes()),),
        root_certificates=ca, require_client_auth=False)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        # flower-supernode --root-certificates ca.crt
        channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                      grpc.ssl_channel_credentials(root_certificates=ca))
        grpc.channel_ready_future(channel).result(timeout=5)
        channel.close()
    finally:
        server.stop(None)


def test_step_by_step_commands_and_overwrite_protection(tmp_path, capsys):
    ca_dir, link_dir, node_dir = tmp_path / "ca", tmp_path / "link", tmp_path / "nodes"
    assert main(["certs", "ca", "--out", str(ca_dir)]) == 0
    assert main(["certs", "superlink", "--ca", str(ca_dir), "--out", str(link_dir),
                 "--host", "10.1.2.3"]) == 0
    assert main(["certs", "node", "hospital-a", "--out", str(node_dir)]) == 0
    assert _mode(node_dir / "hospital-a") == 0o600
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((link_dir / "server.pem").read_bytes())
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("10.1.2.3")))
    capsys.readouterr()

    before = (node_dir / "hospital-a").read_bytes()
    assert main(["certs", "node", "hospital-a", "--out", str(node_dir)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (node_dir / "hospital-a").read_bytes() == before

    os.chmod(node_dir / "hospital-a", 0o644)  # --force must not keep looser permissions
    assert main(["certs", "node", "hospital-a", "--out", str(node_dir), "--force"]) == 0
    assert (node_dir / "hospital-a").read_bytes() != before
    assert _mode(node_dir / "hospital-a") == 0o600


@pytest.mark.parametrize("args, expected", [
    (["certs", "superlink", "--ca", "{tmp}/no-ca", "--out", "{tmp}/x", "--host", "a.org"],
     "no CA in"),
    (["certs", "all", "--out", "{tmp}/x", "--host", "link.org:9092"], "not a DNS name"),
    (["certs", "all", "--out", "{tmp}/x", "--host", "https://link.org"], "not a DNS name"),
    (["certs", "all", "--out", "{tmp}/x", "--host", "10.0.0.300"], "not a valid IP"),
    (["certs", "all", "--out", "{tmp}/x", "--host", "a.org", "--nodes", "0"], "--nodes"),
    (["certs", "all", "--out", "{tmp}/x", "--host", "a.org", "--nodes", "1000000"], "--nodes"),
    (["certs", "node", "../escape", "--out", "{tmp}/x"], "node name"),
])
def test_user_mistakes_are_one_line_errors_and_write_nothing(tmp_path, capsys, args, expected):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("fedssl certs: error: ") and expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "x").exists()


def test_load_ca_rejects_a_key_that_does_not_belong(tmp_path):
    assert main(["certs", "ca", "--out", str(tmp_path / "one")]) == 0
    assert main(["certs", "ca", "--out", str(tmp_path / "two")]) == 0
    (tmp_path / "one" / "ca.key").write_bytes((tmp_path / "two" / "ca.key").read_bytes())
    with pytest.raises(dc.CredentialError, match="is not the key of"):
        dc.load_ca(tmp_path / "one")


@pytest.mark.parametrize("host, kind, value", [
    ("Link.Example.org.", x509.DNSName, "link.example.org"),
    ("superlink", x509.DNSName, "superlink"),
    ("192.168.0.7", x509.IPAddress, ipaddress.ip_address("192.168.0.7")),
    ("[fd00::7]", x509.IPAddress, ipaddress.ip_address("fd00::7")),
])
def test_hosts_become_dns_or_ip_sans(host, kind, value):
    entry = dc.parse_host(host)
    assert isinstance(entry, kind) and entry.value == value


def test_an_out_folder_this_user_cannot_search_is_a_one_line_error(tmp_path, capsys,
                                                                   monkeypatch):
    """An unsearchable parent makes every look inside it a PermissionError. These tests run as
    root, which searches every folder, so the operating system's answer is stood in for."""
    import pathlib

    locked = tmp_path / "locked"
    real_exists = pathlib.Path.exists

    def exists(path: pathlib.Path, *args, **kwargs) -> bool:
        if locked in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "exists", exists)
    code = main(["certs", "all", "--out", str(locked / "x"), "--host", "a.org"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fedssl certs: error: cannot use ")
    assert "Permission denied" in err and len(err.strip().splitlines()) == 1


def test_loopback_is_always_named_and_the_next_steps_follow_the_runbook(tmp_path, capsys):
    """compose and the runbook dial the SuperLink at 127.0.0.1 (gateway, SuperExec) with
    hostname checking, so the certificate names it even when --host did not; the printed next
    steps are the runbook's: SuperLink on loopback, `fedssl gateway` the one public port, nodes
    with bounded retries (docs/deploy.md §2-3)."""
    out = tmp_path / "creds"
    assert main(["certs", "all", "--out", str(out), "--host", "superlink", "--nodes", "2"]) == 0
    ca, server = _load(out)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["superlink"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    _verify(ca, server, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))

    lines = capsys.readouterr().out.splitlines()
    link = next(x for x in lines if x.strip().startswith("flower-superlink "))
    assert "--host 127.0.0.1 --port 9093" in link and "--enable-supernode-auth" in link
    gateway = next(x for x in lines if x.strip().startswith("fedssl gateway "))
    assert "--listen 0.0.0.0:9092 --superlink 127.0.0.1:9093" in gateway
    assert f"--certfile {out / 'superlink' / 'server.pem'}" in gateway
    node = next(x for x in lines if x.strip().startswith("flower-supernode "))
    assert "--superlink superlink:9092" in node and "--max-retries 10" in node
    assert f"--root-certificates {out / 'ca' / 'ca.crt'}" in node
    register = next(x for x in lines if x.strip().startswith("flwr supernode register "))
    assert "once per node" in register
