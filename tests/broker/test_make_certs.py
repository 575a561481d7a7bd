"""scripts/make_certs.py: a private CA and a server certificate that verify together."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_certs.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_certs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_certs", module)
    spec.loader.exec_module(module)
    return module


make_certs = load_script()


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return dns, ips


def test_cli_writes_the_four_files_prints_them_and_keeps_keys_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code = make_certs.main(
        [
            "--out-dir",
            str(out),
            "--hostname",
            "mqtt.example.net",
            "--hostname",
            "mosquitto",
            "--ip",
            "10.0.0.5",
        ]
    )
    printed = capsys.readouterr().out
    assert 0 == code
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        assert str(out / name) in printed
    modes = {name: (out / name).stat().st_mode & 0o777 for name in ("ca.key", "server.key")}
    assert {"ca.key": 0o600, "server.key": 0o600} == modes
    assert ({"mqtt.example.net", "mosquitto", "localhost"}, {"10.0.0.5", "127.0.0.1"}) == sans(
        out / "server.crt"
    )


def test_the_server_certificate_is_signed_by_the_ca_for_server_use(tmp_path: Path) -> None:
    paths = make_certs.make_certs(tmp_path, ["broker.test"], key_type="rsa")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert [ExtendedKeyUsageOID.SERVER_AUTH] == list(usage)
    assert (True, 0) == (constraints.ca, constraints.path_length)


def test_an_existing_ca_is_reused_unless_a_new_one_is_asked_for(tmp_path: Path) -> None:
    first = make_certs.make_certs(tmp_path, ["broker.test"])
    ca_text = first.ca_cert.read_bytes()
    server_text = first.server_cert.read_bytes()
    again = make_certs.make_certs(tmp_path, ["broker.test"])
    assert ca_text == again.ca_cert.read_bytes()
    assert server_text != again.server_cert.read_bytes()
    renewed = make_certs.make_certs(tmp_path, ["broker.test"], new_ca=True)
    assert ca_text != renewed.ca_cert.read_bytes()


def test_a_bad_ip_is_reported_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == make_certs.main(["--out-dir", str(tmp_path / "c"), "--ip", "not-an-ip"])
    assert "not-an-ip" in capsys.readouterr().err
    assert not (tmp_path / "c" / "ca.key").exists()
