#!/usr/bin/env python3
"""Make a private CA and a server certificate for the broker's TLS listener.

    python scripts/make_certs.py --out-dir certs --hostname mqtt.example.net --hostname mosquitto

writes ``ca.crt``, ``ca.key``, ``server.crt`` and ``server.key`` into ``--out-dir`` (keys mode
0600) and prints their paths. The server certificate's subject alternative names are every
``--hostname`` and ``--ip`` given, plus ``localhost`` and ``127.0.0.1``. An existing CA in the
directory is reused, so renewing the server certificate does not change what clients trust;
``--new-ca`` replaces it (every client then needs the new ``ca.crt``).

Keys are ECDSA P-256 by default (ESP-IDF's mbedTLS, OpenSSL and Python all handle them);
``--key-type rsa`` makes RSA 2048 keys. Needs the ``cryptography`` package (a dev dependency).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "broker-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(key: PrivateKey, common_name: str, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_server_cert(
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hostnames: Sequence[str],
    ips: Sequence[str],
    days: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Temp file with ``mode`` from the start, then rename: a key is never readable by others."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(paths: CertPaths) -> tuple[x509.Certificate, PrivateKey] | None:
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        return None
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SystemExit(f"{paths.ca_key}: unsupported CA key type")
    return cert, key


def make_certs(
    out_dir: Path,
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    *,
    key_type: str = "ec",
    days: int = 825,
    ca_days: int = 3650,
    new_ca: bool = False,
) -> CertPaths:
    """Write the CA (unless one exists and ``new_ca`` is false) and a fresh server certificate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(
        out_dir / "ca.crt", out_dir / "ca.key", out_dir / "server.crt", out_dir / "server.key"
    )
    all_names = list(dict.fromkeys([*hostnames, *DEFAULT_NAMES]))
    all_ips = list(dict.fromkeys([*ips, *DEFAULT_IPS]))
    for ip in all_ips:
        ipaddress.ip_address(ip)  # ValueError names the bad address
    existing = None if new_ca else _load_ca(paths)
    if existing is None:
        ca_key = new_key(key_type)
        # a distinct name per CA: clients and tools can tell two of them apart
        ca_cert = make_ca(ca_key, f"broker-agent private CA {secrets.token_hex(4)}", ca_days)
        _write(paths.ca_key, _key_pem(ca_key), 0o600)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        ca_cert, ca_key = existing
    server_key = new_key(key_type)
    server_cert = make_server_cert(server_key, ca_cert, ca_key, all_names, all_ips, days)
    _write(paths.server_key, _key_pem(server_key), 0o600)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out-dir", type=Path, default=Path("certs"))
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        help="DNS name clients use for the broker (repeatable; localhost is always added)",
    )
    parser.add_argument(
        "--ip", action="append", default=[], help="IP address SAN (repeatable; 127.0.0.1 added)"
    )
    parser.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    parser.add_argument("--days", type=int, default=825, help="server certificate validity")
    parser.add_argument("--ca-days", type=int, default=3650, help="CA validity (new CA only)")
    parser.add_argument("--new-ca", action="store_true", help="replace an existing CA")
    args = parser.parse_args(argv)
    try:
        paths = make_certs(
            args.out_dir,
            args.hostname,
            args.ip,
            key_type=args.key_type,
            days=args.days,
            ca_days=args.ca_days,
            new_ca=args.new_ca,
        )
    except ValueError as exc:
        print(f"make_certs: {exc}", file=sys.stderr)
        return 2
    print(f"ca certificate:     {paths.ca_cert}  (give this to every client)")
    print(f"ca key:             {paths.ca_key}  (keep offline; mode 0600)")
    print(f"server certificate: {paths.server_cert}")
    print(f"server key:         {paths.server_key}  (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
