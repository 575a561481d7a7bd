"""The one secrets reader: what it refuses, that provisioning and the broker sync agree, and
that nothing in the secrets directory (a FIFO, a socket, a symlink) blocks or stops anything."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from broker_agent.broker.users import RefusalReason, ServiceAccounts, collect_users
from broker_agent.errors import ProvisionFailure
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.secrets import SecretsProblem, SecretsReader
from firmware_contracts.codes import ProvisionErrorCode
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import observe, payload_of, v5_properties

pytestmark = pytest.mark.timeout(30)  # a blocking read of a FIFO would hang: fail instead

FLEET = {"token_url": "https://auth.example.invalid/t", "base_url": "https://api.example.invalid/"}
SECRET = "DEVICE-SECRET-never-shown-7f3a"
DEVICE = {"client_id": "cid-1", "client_secret": SECRET}
ACCOUNTS = ServiceAccounts.parse({"agents": {"agent-1": "agent-pw"}})


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir()
    config_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    (secrets_dir / "good-1.json").write_text(json.dumps(DEVICE))
    return secrets_dir, config_dir


def make_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def failure(store: CredentialStore, device_id: str) -> ProvisionFailure:
    with pytest.raises(ProvisionFailure) as info:
        store.values_for(device_id)
    return info.value


# -- contract 6.6: device_key ------------------------------------------------------------------


def test_another_device_key_is_invalid_credentials_naming_field_and_file(
    dirs: tuple[Path, Path],
) -> None:
    secrets_dir, config_dir = dirs
    (secrets_dir / "dev-1.json").write_text(json.dumps({**DEVICE, "device_key": "k-OTHER-99"}))
    error = failure(CredentialStore(secrets_dir, config_dir), "dev-1")
    assert ProvisionErrorCode.INVALID_CREDENTIALS == error.code
    assert "device_key" in error.message and "dev-1.json" in error.message
    assert "k-OTHER-99" not in error.message and SECRET not in error.message


def test_another_device_key_gets_no_broker_account(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    (secrets_dir / "dev-1.json").write_text(json.dumps({**DEVICE, "device_key": "good-1"}))
    users = collect_users(secrets_dir, ACCOUNTS)
    assert [("dev-1", RefusalReason.DEVICE_KEY_MISMATCH)] == [
        (r.device_id, r.reason) for r in users.refused
    ]
    assert {"agent-1", "good-1"} == set(users.passwords)  # good-1 keeps its own account


# -- one rule set for both readers ---------------------------------------------------------------

BAD_DOCUMENTS: dict[str, Any] = {
    "unknown-key": {**DEVICE, "wifi_pasword": "typo"},
    "not-a-string": {**DEVICE, "client_id": 7},
    "not-an-object": [DEVICE],
    "device-key": {**DEVICE, "device_key": "someone-else"},
}
BAD_TEXTS = {
    "nan": '{"client_id": "c", "client_secret": NaN}',
    "lone-surrogate": '{"client_id": "c", "client_secret": "\\ud800"}',
    "not-json": '{"client_secret": ',
}


@pytest.mark.parametrize("name", [*BAD_DOCUMENTS, *BAD_TEXTS])
def test_a_file_provisioning_refuses_also_gets_no_broker_account(
    dirs: tuple[Path, Path], name: str
) -> None:
    secrets_dir, config_dir = dirs
    path = secrets_dir / f"{name}.json"
    if name in BAD_DOCUMENTS:
        path.write_text(json.dumps(BAD_DOCUMENTS[name]))
    else:
        path.write_text(BAD_TEXTS[name])
    error = failure(CredentialStore(secrets_dir, config_dir), name)
    users = collect_users(secrets_dir, ACCOUNTS)
    assert name not in users.passwords
    assert [name] == [r.device_id for r in users.refused]
    assert error.code in (
        ProvisionErrorCode.CREDENTIALS_UNAVAILABLE,
        ProvisionErrorCode.INVALID_CREDENTIALS,
    )
    assert SECRET not in error.message + users.refused[0].detail


# -- only regular files --------------------------------------------------------------------------


def test_a_fifo_is_unreadable_at_once_and_other_devices_still_provision(
    dirs: tuple[Path, Path],
) -> None:
    secrets_dir, config_dir = dirs
    os.mkfifo(secrets_dir / "fifo-1.json")
    store = CredentialStore(secrets_dir, config_dir)
    error = failure(store, "fifo-1")  # known (it has an entry), never opened for reading
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "fifo-1.json is a FIFO" in error.message
    assert SECRET == store.values_for("good-1")["client_secret"]


def test_a_fifo_as_the_fleet_file_refuses_every_device_without_blocking(
    dirs: tuple[Path, Path],
) -> None:
    secrets_dir, config_dir = dirs
    (secrets_dir / "_fleet.json").unlink()
    os.mkfifo(secrets_dir / "_fleet.json")
    error = failure(CredentialStore(secrets_dir, config_dir), "good-1")
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code
    assert "_fleet.json is a FIFO" in error.message


def test_a_socket_is_unreadable(dirs: tuple[Path, Path]) -> None:
    secrets_dir, config_dir = dirs
    sock = make_socket(secrets_dir / "sock-1.json")
    try:
        error = failure(CredentialStore(secrets_dir, config_dir), "sock-1")
    finally:
        sock.close()
    assert "sock-1.json is a socket" in error.message


def test_a_symlink_to_outside_is_unreadable(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    secrets_dir, config_dir = dirs
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(DEVICE))
    (secrets_dir / "link-1.json").symlink_to(outside)
    error = failure(CredentialStore(secrets_dir, config_dir), "link-1")
    assert "link-1.json is a symlink to a file outside its directory" in error.message
    assert "link-1" not in collect_users(secrets_dir, ACCOUNTS).passwords


def test_a_symlink_inside_the_directory_is_read(dirs: tuple[Path, Path]) -> None:
    """As Kubernetes mounts secrets: <name> -> ..data/<name>, inside the directory."""
    secrets_dir, config_dir = dirs
    (secrets_dir / "..data").mkdir()
    (secrets_dir / "..data" / "k8s-1.json").write_text(json.dumps(DEVICE))
    (secrets_dir / "k8s-1.json").symlink_to("..data/k8s-1.json")
    values = CredentialStore(secrets_dir, config_dir).values_for("k8s-1")
    assert SECRET == values["client_secret"]
    assert SECRET == collect_users(secrets_dir, ACCOUNTS).passwords["k8s-1"]


def test_a_dangling_symlink_is_a_known_but_unreadable_device(dirs: tuple[Path, Path]) -> None:
    secrets_dir, config_dir = dirs
    (secrets_dir / "gone-1.json").symlink_to(secrets_dir / "missing.json")
    error = failure(CredentialStore(secrets_dir, config_dir), "gone-1")
    assert ProvisionErrorCode.CREDENTIALS_UNAVAILABLE == error.code  # not unknown_device
    assert "dangling symlink" in error.message


def test_an_unreadable_file_is_logged_once_and_never_with_content(
    dirs: tuple[Path, Path],
) -> None:
    secrets_dir, _ = dirs
    os.mkfifo(secrets_dir / "fifo-1.json")
    (secrets_dir / "nan-1.json").write_text('{"client_secret": NaN, "x": "' + SECRET + '"}')
    reader = SecretsReader(secrets_dir)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert SecretsProblem.UNREADABLE == reader.device("fifo-1").problem
            assert SecretsProblem.UNREADABLE == reader.device("nan-1").problem
    assert [
        ("fifo-1.json", "secrets_file_unreadable"),
        ("nan-1.json", "secrets_file_unreadable"),
    ] == [(entry["file"], entry["event"]) for entry in logs]
    assert SECRET not in repr(logs)


def test_a_file_is_read_again_only_when_it_changed(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    reader = SecretsReader(secrets_dir)
    first = reader.device("good-1")
    assert first is reader.device("good-1")  # unchanged: the cached object
    (secrets_dir / "good-1.json").write_text(json.dumps({**DEVICE, "client_id": "cid-changed"}))
    assert "cid-changed" == reader.device("good-1").string("client_id")


def test_retargeting_a_symlink_is_a_change(dirs: tuple[Path, Path]) -> None:
    secrets_dir, _ = dirs
    for name, client_id in (("a.data", "cid-a"), ("b.data", "cid-b")):
        (secrets_dir / name).write_text(json.dumps({**DEVICE, "client_id": client_id}))
    link = secrets_dir / "link-1.json"
    link.symlink_to("a.data")
    reader = SecretsReader(secrets_dir)
    assert "cid-a" == reader.device("link-1").string("client_id")
    tmp_link = secrets_dir / "link-1.tmp"
    tmp_link.symlink_to("b.data")
    tmp_link.replace(link)
    assert "cid-b" == reader.device("link-1").string("client_id")


# -- the running agent ---------------------------------------------------------------------------


async def provision(broker: Broker, device_id: str) -> dict[str, Any]:
    """One v5 request; the single reply that comes back on our own response topic."""
    response_topic = f"iot/provision/{device_id}/response/t-{uuid.uuid4().hex[:8]}"
    async with observe(broker.url, response_topic, qos=1) as replies:
        await replies.client.publish(
            f"iot/provision/{device_id}/request",
            json.dumps({"request_id": "r-1", "partition_size": 0x5000}),
            qos=1,
            properties=v5_properties(response_topic, b"c-1"),
        )
        message = await replies.first_on(response_topic)
    reply: dict[str, Any] = json.loads(payload_of(message))
    return reply


async def test_an_agent_with_fifos_in_the_secrets_dir_answers_every_device(
    broker: Broker, dirs: tuple[Path, Path]
) -> None:
    secrets_dir, config_dir = dirs
    os.mkfifo(secrets_dir / "fifo-1.json")
    (secrets_dir / "_fleet.json.swp").write_text("editor artefact")
    settings = agent_settings(broker.url, config_dir, secrets_dir)

    async with running_agent(settings):
        fifo = await provision(broker, "fifo-1")
        good = await provision(broker, "good-1")
        os.mkfifo(secrets_dir / "fifo-2.json")  # while running
        later = await provision(broker, "good-1")

    assert ("error", "credentials_unavailable") == (fifo["status"], fifo["error"]["code"])
    assert "is a FIFO" in fifo["error"]["message"]
    assert ("ok", "ok") == (good["status"], later["status"])
