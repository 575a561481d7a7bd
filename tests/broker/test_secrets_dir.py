"""The broker-auth sync with things in the secrets directory that are not regular files."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import structlog

from broker_agent.broker.auth_sync import BrokerAuthSettings, BrokerAuthSync
from broker_agent.broker.passwords import parse_password_file
from tests.support.secure_broker import running_auth_sync

pytestmark = pytest.mark.timeout(30)  # a blocking read of a FIFO would hang: fail instead

ACCOUNTS = {"agents": {"agent-1": "agent-pw"}}


async def test_the_sync_completes_with_fifos_and_still_follows_edits(tmp_path: Path) -> None:
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir()
    config_dir.mkdir()
    (secrets_dir / "_broker_users.json").write_text(json.dumps(ACCOUNTS))
    (secrets_dir / "dev-1.json").write_text(json.dumps({"client_secret": "s-1"}))
    os.mkfifo(secrets_dir / "fifo-1.json")  # at start-up
    auth = BrokerAuthSettings(
        secrets_dir, config_dir, tmp_path / "auth" / "passwd", tmp_path / "auth" / "acl"
    )

    def users() -> set[str]:
        return set(parse_password_file(auth.passwd_file.read_text()))

    with structlog.testing.capture_logs() as logs:
        async with running_auth_sync(auth) as sync:
            at_start = users()
            os.mkfifo(secrets_dir / "fifo-2.json")  # while running
            (secrets_dir / "dev-2.json").write_text(json.dumps({"client_secret": "s-2"}))
            async with asyncio.timeout(10):
                while "dev-2" not in users():
                    sync.synced.clear()
                    await sync.synced.wait()
            later = users()

    assert {"agent-1", "dev-1"} == at_start
    assert {"agent-1", "dev-1", "dev-2"} == later
    refused = {
        (entry["device_id"], entry["reason"])
        for entry in logs
        if entry["event"] == "broker_device_refused"
    }
    assert {("fifo-1", "secrets_unreadable"), ("fifo-2", "secrets_unreadable")} == refused


def test_a_fifo_as_the_service_accounts_file_writes_nothing_and_does_not_block(
    tmp_path: Path,
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    os.mkfifo(secrets_dir / "_broker_users.json")
    auth = BrokerAuthSettings(secrets_dir, tmp_path, tmp_path / "passwd", tmp_path / "acl")
    result = BrokerAuthSync(auth).sync_blocking()
    assert result.error is not None and "is a FIFO" in result.error
    assert not auth.passwd_file.exists()
