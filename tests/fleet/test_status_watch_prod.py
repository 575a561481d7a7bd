"""``broker-agent status --watch`` under the production profile (``use_username_as_clientid``):
one account is one client id, so the watch must hold one connection only. It used two (live
updates plus a snapshot reader) and the second connect kicked the first off at once."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sys

import pytest

from tests.broker.conftest import certs, secure_broker  # noqa: F401 - the fixtures
from tests.support.secure_broker import SecureBroker

pytestmark = pytest.mark.timeout(60)


async def test_watch_on_an_operator_account_stays_connected_and_shows_live_changes(
    secure_broker: SecureBroker,  # noqa: F811 - the fixture imported above
) -> None:
    b = secure_broker
    async with b.client("dev-a") as device:
        await device.publish("iot/devices/dev-a/status", b'{"state":"online"}', retain=True)
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker_agent.cli",
        "status",
        "--watch",
        "--broker-url",
        f"mqtt://127.0.0.1:{b.plain_port}",
        stdout=terminal,
        stderr=terminal,
        env={
            **os.environ,
            "COLUMNS": "200",
            "TERM": "xterm",
            "BROKER_AGENT_MQTT_USERNAME": "operator",
            "BROKER_AGENT_MQTT_PASSWORD": b.passwords["operator"],
        },
    )
    os.close(terminal)
    shown = bytearray()

    def read() -> bytes:
        try:
            return os.read(controller, 65536)
        except OSError:  # EIO: the process ended and closed the terminal
            return b""

    async def until_shown(text: bytes) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            while text not in shown:
                chunk = await loop.run_in_executor(None, read)
                assert chunk, f"status --watch ended: {shown.decode(errors='replace')[-500:]}"
                shown.extend(chunk)

    try:
        await until_shown(b"dev-a")
        async with b.client("dev-b") as device:
            await device.publish("iot/devices/dev-b/status", b'{"state":"online"}', retain=True)
        await until_shown(b"dev-b")
        assert process.returncode is None  # still watching
        process.send_signal(signal.SIGINT)
        assert 0 == await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(controller)
