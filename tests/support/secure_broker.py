"""Mosquitto with the production profile (mosquitto.prod.conf) for tests, on loopback ports.

``secure_broker(tmp_path, certs)`` starts Mosquitto from the project's ``mosquitto.prod.conf``
with only its paths and ports replaced (TLS on a free port, the plain listener on another,
both on loopback), with password and ACL files written by ``BrokerAuthSync`` from a secrets
directory (``SERVICE_ACCOUNTS`` and two devices, ``DEVICE_SECRETS``), and a CA and server
certificate made by ``scripts/make_certs.py`` (``make_test_certs``).

tests/broker/conftest.py turns both into the fixtures ``certs`` and ``secure_broker``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
from pydantic import SecretStr

from broker_agent.broker.auth_sync import BrokerAuthSettings, BrokerAuthSync
from broker_agent.broker.process import free_port
from broker_agent.settings import MqttSettings
from tests.support.service import running

PROJECT = Path(__file__).resolve().parents[2]
NOT_AUTHORIZED = 0x87

SERVICE_ACCOUNTS = {
    "agents": {
        "test-agent": "agent-" + secrets.token_urlsafe(12),
        "test-agent-2": "agent2-" + secrets.token_urlsafe(12),
    },
    "stations": {
        "station-1": "st1-" + secrets.token_urlsafe(12),
        "station-2": "st2-" + secrets.token_urlsafe(12),
    },
    "operators": {
        "operator": "op-" + secrets.token_urlsafe(12),
        "console-1": "con-" + secrets.token_urlsafe(12),
    },
    "provisioners": ["console-1"],
}
DEVICE_SECRETS = {"dev-a": secrets.token_urlsafe(24), "dev-b": secrets.token_urlsafe(24)}


def _load_make_certs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_certs", PROJECT / "scripts/make_certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_certs", module)
    spec.loader.exec_module(module)
    return module


make_certs = _load_make_certs()


def make_test_certs(out_dir: Path) -> Any:
    """A CA and a server certificate (for ``localhost``) from scripts/make_certs.py."""
    return make_certs.make_certs(out_dir, ["broker.test"])


@dataclass
class SecureBroker:
    root: Path
    tls_port: int
    plain_port: int
    certs: Any
    auth: BrokerAuthSettings
    passwords: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "mosquitto.log"

    @property
    def config_dir(self) -> Path:
        return self.auth.config_dir

    @property
    def secrets_dir(self) -> Path:
        return self.auth.secrets_dir

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def settings(self, user: str, password: str | None = None) -> MqttSettings:
        secret = password if password is not None else self.passwords[user]
        return MqttSettings(
            mqtt_username=user, mqtt_password=SecretStr(secret), ca_file=self.certs.ca_cert
        )

    def client(
        self, user: str | None, password: str | None = None, *, tls: bool = False, **kw: Any
    ) -> aiomqtt.Client:
        """A v5 client on the plain loopback listener, or on the TLS one (our CA)."""
        if user is not None and password is None:
            password = self.passwords[user]
        identifier = kw.pop("client_id", None) or kw.pop("identifier", None)
        host, port, tls_context = "127.0.0.1", self.plain_port, None
        if tls:
            host, port = "localhost", self.tls_port
            tls_context = ssl.create_default_context(cafile=str(self.certs.ca_cert))
        return aiomqtt.Client(
            host,
            port,
            username=user,
            password=password,
            identifier=identifier or f"{user}-{secrets.token_hex(3)}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=tls_context,
            **kw,
        )

    def start(self) -> None:
        conf = self.root / "mosquitto.conf"
        conf.write_text(prod_config_for_test(self), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.plain_port), 0.2):
                if self.auth.pid_file is not None and self.auth.pid_file.exists():
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def prod_config_for_test(broker: SecureBroker) -> str:
    """mosquitto.prod.conf with the image's paths and ports swapped for the test's own."""
    text = (PROJECT / "mosquitto.prod.conf").read_text(encoding="utf-8")
    auth, certs = broker.auth, broker.certs
    paths = {
        "/mosquitto/data/auth/passwd": auth.passwd_file,
        "/mosquitto/data/auth/acl": auth.acl_file,
        "/mosquitto/data/auth/mosquitto.pid": auth.pid_file,
        "/mosquitto/config/certs/ca.crt": certs.ca_cert,
        "/mosquitto/config/certs/server.crt": certs.server_cert,
        "/mosquitto/config/certs/server.key": certs.server_key,
        "/mosquitto/data/": f"{broker.root / 'data'}/",
    }
    listeners = {
        "listener 8883": f"listener {broker.tls_port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {broker.plain_port} 127.0.0.1",
    }
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in listeners:
            line = listeners[stripped]
        elif not stripped.startswith("#") and len(stripped.split()) == 2:
            key, value = stripped.split()
            if value in paths:
                line = f"{key} {paths[value]}"
        lines.append(line)
    result = "\n".join(lines) + "\n"
    active = [ln for ln in result.splitlines() if ln.strip() and not ln.startswith("#")]
    assert not [ln for ln in active if "/mosquitto/" in ln], "a production path was not mapped"
    assert sum(ln.startswith("listener ") for ln in active) == 2
    (broker.root / "data").mkdir(exist_ok=True)
    if os.geteuid() == 0:
        result += "user root\n"  # as root, mosquitto would drop to `mosquitto` first
    return result


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


@contextmanager
def secure_broker(tmp_path: Path, certs: Any) -> Iterator[SecureBroker]:
    """A running production-profile broker over a fresh secrets and config directory."""
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir(mode=0o700)
    config_dir.mkdir()
    write_json(secrets_dir / "_broker_users.json", SERVICE_ACCOUNTS)
    write_json(secrets_dir / "_fleet.json", {"token_url": "https://t", "base_url": "https://b"})
    for device_id, secret in DEVICE_SECRETS.items():
        write_json(secrets_dir / f"{device_id}.json", {"client_id": "c", "client_secret": secret})
        write_json(config_dir / f"{device_id}.json", {"name": device_id})
    auth_dir = tmp_path / "auth"
    auth = BrokerAuthSettings(
        secrets_dir=secrets_dir,
        config_dir=config_dir,
        passwd_file=auth_dir / "passwd",
        acl_file=auth_dir / "acl",
        pid_file=auth_dir / "mosquitto.pid",
        debounce_ms=20,
    )
    passwords = {
        user: pw
        for group in SERVICE_ACCOUNTS.values()
        if isinstance(group, dict)
        for user, pw in group.items()
    }
    broker = SecureBroker(
        tmp_path, free_port(), free_port(), certs, auth, {**passwords, **DEVICE_SECRETS}
    )
    # the files exist before the broker starts (it refuses to start without them)
    assert BrokerAuthSync(auth).sync_blocking().changed
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@asynccontextmanager
async def running_auth_sync(auth: BrokerAuthSettings) -> AsyncIterator[BrokerAuthSync]:
    """The agent's broker-auth service, running (first sync done, watching) until exit."""
    sync = BrokerAuthSync(auth)
    async with running(sync.run(), sync.ready, name="broker-auth-sync", timeout=10):
        yield sync


async def connect_code(client: aiomqtt.Client) -> int:
    """0 when the connection is accepted, else the CONNACK reason code."""
    try:
        async with client:
            return 0
    except aiomqtt.MqttCodeError as exc:
        rc: Any = exc.rc  # a paho ReasonCode on MQTT v5
        return int(getattr(rc, "value", rc))
