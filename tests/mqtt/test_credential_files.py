"""The MQTT password file and the CA file, read at every (re)connect.

A FIFO at the password file's path used to block the event loop for good (a plain
``read_text``); a file that failed to read at a reconnect (a Kubernetes secret rotation
swaps it) raised a ``SetupError`` outside the reconnect loop's ``try`` and ended the process;
``ssl.create_default_context(cafile=...)`` let a raw ``OSError`` escape the same way.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import structlog

from broker_agent.errors import SetupError
from broker_agent.mqtt import Backoff, Connection, make_connection, run_forever_connected
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker
from tests.support.secure_broker import make_test_certs

pytestmark = pytest.mark.timeout(30)


class Sessions:
    """Counts the sessions of a reconnect loop; each one is dropped when ``drop`` is set."""

    def __init__(self, settings: MqttSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.count = 0
        self.errors: list[Exception] = []
        self.changed = asyncio.Event()
        self.between: Any = None  # called with the session number before the drop

    def connect(self) -> Connection:
        return make_connection(self.settings, self.url, client_id=f"t-files-{self.count}")

    async def session(self, connection: Connection) -> None:
        self.count += 1
        self.changed.set()
        if self.between is not None:
            self.between(self.count)
        connection.abort()
        await connection.wait_disconnected()

    def backoff(self, error: Exception, delay: float) -> None:
        del delay
        self.errors.append(error)
        self.changed.set()

    async def run_until(self, done: Any) -> None:
        loop = asyncio.create_task(
            run_forever_connected(self.connect, self.session, Backoff(0.01, 0.05), self.backoff),
            name="session-loop-under-test",
        )
        try:
            while not done():
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait({loop, waiter}, timeout=10, return_when="FIRST_COMPLETED")
                waiter.cancel()
                if loop.done():
                    loop.result()
                    raise AssertionError("the reconnect loop ended")
        finally:
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop


def password_broker(make_broker: MakeBroker, tmp_path: Path, user: str, password: str) -> str:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), user, password], check=True)
    passwd.chmod(0o600)
    broker = make_broker(f"password_file {passwd}")
    # make_broker's head says allow_anonymous true; the later line wins in Mosquitto 2.0
    return broker.url


def test_a_fifo_as_the_password_file_is_a_setup_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    settings = MqttSettings(mqtt_username="agent", mqtt_password_file=fifo)

    with pytest.raises(SetupError, match="is a FIFO"):
        settings.password()


async def test_a_password_file_unreadable_at_reconnect_keeps_the_last_good_password(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    url = password_broker(make_broker, tmp_path, "agent", "rotat3-me-pw")
    password_file = tmp_path / "agent-password"
    password_file.write_text("rotat3-me-pw\n")
    sessions = Sessions(MqttSettings(mqtt_username="agent", mqtt_password_file=password_file), url)

    def rotate(count: int) -> None:
        if count == 1:  # mid-rotation: the file is briefly something else
            password_file.unlink()
            os.mkfifo(password_file)

    sessions.between = rotate
    with structlog.testing.capture_logs() as logs:
        await sessions.run_until(lambda: sessions.count >= 2)

    assert 2 == sessions.count
    warnings = [e for e in logs if e["event"] == "mqtt_password_file_unreadable"]
    assert warnings and "rotat3-me-pw" not in repr(logs)


async def test_a_missing_ca_file_at_start_is_a_setup_error(tmp_path: Path) -> None:
    settings = MqttSettings(ca_file=tmp_path / "missing-ca.crt")

    with pytest.raises(SetupError, match=r"missing-ca\.crt does not exist"):
        make_connection(settings, "mqtts://127.0.0.1:8883", client_id="t-no-ca")


async def test_a_ca_file_broken_at_reconnect_is_backed_off_not_fatal(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    certs = make_test_certs(tmp_path / "certs")
    broker = make_broker(f"certfile {certs.server_cert}", f"keyfile {certs.server_key}")
    url = broker.url.replace("mqtt://127.0.0.1", "mqtts://localhost")
    ca_file = tmp_path / "ca.crt"
    good = Path(certs.ca_cert).read_bytes()
    ca_file.write_bytes(good)
    sessions = Sessions(MqttSettings(ca_file=ca_file), url)

    def break_it(count: int) -> None:
        if count == 1:
            ca_file.write_text("not a certificate\n")

    def repaired() -> bool:
        refused = any("ca.crt" in str(error) for error in sessions.errors)
        if refused and ca_file.read_bytes() != good:
            ca_file.write_bytes(good)  # the rotation finished
        return sessions.count >= 2

    sessions.between = break_it
    await sessions.run_until(repaired)

    assert 2 == sessions.count
    assert any("ca.crt" in str(error) for error in sessions.errors)


def test_the_agent_exits_2_at_start_on_an_unreadable_password_file(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    (tmp_path / "configs").mkdir()
    env = {
        **os.environ,
        "BROKER_AGENT_MQTT_USERNAME": "agent",
        "BROKER_AGENT_MQTT_PASSWORD_FILE": str(fifo),
        "BROKER_AGENT_CONFIG_DIR": str(tmp_path / "configs"),
        "BROKER_AGENT_SECRETS_DIR": str(tmp_path / "secrets"),
        "BROKER_AGENT_HTTP_LISTEN": "",
    }

    result = subprocess.run(
        [sys.executable, "-m", "broker_agent.cli", "run", "--broker-url", make_broker().url],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )

    assert 2 == result.returncode
    assert "is a FIFO" in result.stdout + result.stderr
