"""Credentials for a TLS SuperLink with node authentication, made with `cryptography` only.

What Flower 1.42 reads, and therefore the formats written here:
* `flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile` reads three PEM files and
  hands them to `grpc.ssl_server_credentials` (flwr/common/args.py, flwr/supercore/grpc.py) and
  to uvicorn's `ssl_certfile`/`ssl_keyfile` for the HTTP APIs (flwr/superlink/cli/
  flower_superlink.py): an X.509 CA certificate, the server certificate, and its unencrypted
  PEM (PKCS#8) private key. SuperNodes check the server certificate against `ca.crt`
  (`--root-certificates`), including the host name they dial, hence a SAN per host.
* `flower-supernode --auth-supernode-private-key` loads the key with
  `cryptography...serialization.load_ssh_private_key(data, None)` and requires an
  `EllipticCurvePrivateKey` (flwr/supernode/cli/flower_supernode.py): an unencrypted OpenSSH
  private key.
* `flwr supernode register PUBLIC_KEY` loads the file with `load_ssh_public_key` and accepts
  only NIST EC curves (flwr/cli/supernode/register.py): an OpenSSH public key line.
Flower generates its own EC keys on SECP384R1 (flwr/supercore/primitives/asymmetric.py); so do
we, for every key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1
SIGNATURE_HASH = hashes.SHA384  # the hash matching a P-384 key's strength
CA_DAYS = 3650  # the CA outlives many studies; its key should live offline
SERVER_DAYS = 825  # long enough for a multi-year study, short enough to force a rotation
CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid from slightly in the past: nodes' clocks drift
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
SECRET_MODE, PUBLIC_MODE = 0o600, 0o644

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CredentialError(ValueError):
    """A user mistake (bad host, missing CA, existing file...), as a one-line message."""


Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    """A fresh EC private key on Flower's curve."""
    return ec.generate_private_key(CURVE())


def new_ca(common_name: str = "fedssl CA", days: int = CA_DAYS) -> tuple[x509.Certificate, Key]:
    """A self-signed CA certificate (may sign server certificates only) and its key."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: it signs leaf certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, SIGNATURE_HASH())
    )
    return cert, key


def parse_host(host: str) -> x509.GeneralName:
    """The SAN entry for one --host value: an IPAddress for an IP, else a DNSName."""
    text = host.strip()
    bracketed = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return x509.IPAddress(ipaddress.ip_address(bracketed))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    hint = "give a DNS name or IP address without scheme or port, e.g. link.example.org"
    if re.fullmatch(r"[0-9.]+", name):
        raise CredentialError(f"--host '{host}' is not a valid IP address")
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        raise CredentialError(f"--host '{host}' is not a DNS name or IP address ({hint})")
    return x509.DNSName(name)


def new_server_cert(ca_cert: x509.Certificate, ca_key: Key, hosts: list[str],
                    days: int = SERVER_DAYS) -> tuple[x509.Certificate, Key]:
    """A SuperLink TLS certificate for `hosts` (one SAN each, plus 127.0.0.1), signed by the
    CA, and its key."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        entry = parse_host(host)
        if entry not in names:
            names.append(entry)
    if not names:
        raise CredentialError("give at least one --host: the name or IP nodes dial")
    # On the coordinator itself the gateway (and the SuperLink's own SuperExec) dial the
    # SuperLink at 127.0.0.1, with hostname checking: the certificate must name it too.
    loopback = parse_host("127.0.0.1")
    if loopback not in names:
        names.append(loopback)
    key = new_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedssl SuperLink")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, SIGNATURE_HASH())
    )
    return cert, key


def check_node_name(name: str) -> str:
    """`name` if it is usable as a node key file name, else CredentialError."""
    if not _NODE_NAME.fullmatch(name):
        raise CredentialError(f"node name '{name}' must be 1-64 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit")
    return name


def node_key_files(key: Key, name: str) -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key line ending in `name`) for a SuperNode."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + f" {check_node_name(name)}\n".encode()


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    """The private key as unencrypted PEM PKCS#8 (what gRPC and uvicorn load)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_ca(ca_dir: str | Path) -> tuple[x509.Certificate, Key]:
    """The CA certificate and key from a folder made by `fedssl certs ca`."""
    folder = Path(ca_dir).expanduser()
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise CredentialError(f"no CA in {folder} (expected {CA_CERT} and {CA_KEY}); make one "
                              f"with `fedssl certs ca --out {folder}`")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not an unencrypted PEM file"
        raise CredentialError(f"cannot load the CA from {folder}: {reason}") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CredentialError(f"{cert_path} is not a CA certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CredentialError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def refuse_existing(paths: list[Path], force: bool) -> None:
    """CredentialError naming the first of `paths` that exists, unless `force`."""
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if existing and not force:
        others = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CredentialError(f"{existing[0]}{others} already exists; use --force to replace")


def write_files(files: dict[Path, tuple[bytes, int]], force: bool) -> None:
    """Write {path: (content, mode)}; nothing at all if any path exists and not `force`.

    Each file is created with its final mode (never briefly world-readable) under a temporary
    name, then renamed into place, so `--force` also replaces looser permissions.
    """
    refuse_existing(list(files), force)
    for path, (content, mode) in files.items():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
        except OSError as err:
            raise CredentialError(f"cannot write {path}: {err.strerror}") from None


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not cert_sign, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
