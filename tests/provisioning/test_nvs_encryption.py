"""Encrypted NVS images and the nvs_keys partition, checked by decrypting them ourselves."""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from broker_agent.errors import ProvisionFailure
from broker_agent.mqtt import Router, make_connection
from broker_agent.provisioning.messages import ProvisionedImage
from broker_agent.provisioning.nvs_image import build_nvs_image
from broker_agent.provisioning.nvs_keys import (
    NVS_KEYS_PARTITION_SIZE,
    NvsKeyStore,
    nvs_keys_partition,
)
from broker_agent.provisioning.requester import ImageRequester
from firmware_contracts.topics import TopicKind, Topics
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.nvs_parser import NvsParseError, decrypt_nvs, parse_nvs

VALUES = {
    "device_key": "kitchen-01",
    "client_id": "iotdevice-kitchen-01",
    "client_secret": "s3cret-value-that-is-long-enough",
    "token_url": "https://auth.example/token",
    "base_url": "https://api.example",
    "wifi_password": "wifi-pass",
}
KEY = bytes(range(64))


def test_encrypted_image_decrypts_with_the_key_to_exactly_the_values() -> None:
    image = build_nvs_image(VALUES, 0x5000, encryption_key=KEY)
    assert VALUES == parse_nvs(decrypt_nvs(image, KEY)).strings("prov")


def test_encrypted_image_hides_the_secrets_in_the_raw_bytes() -> None:
    image = build_nvs_image(VALUES, 0x5000, encryption_key=KEY)
    assert b"s3cret-value" not in image
    assert b"wifi-pass" not in image
    with pytest.raises(NvsParseError):
        parse_nvs(image)  # entry CRCs do not hold on ciphertext


def test_wrong_key_does_not_decrypt() -> None:
    image = build_nvs_image(VALUES, 0x5000, encryption_key=KEY)
    with pytest.raises(NvsParseError):
        parse_nvs(decrypt_nvs(image, bytes(64)))


def test_encrypted_image_keeps_the_partition_size() -> None:
    assert 0x3000 == len(build_nvs_image(VALUES, 0x3000, encryption_key=KEY))


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ProvisionFailure):
        build_nvs_image(VALUES, 0x5000, encryption_key=b"short")


def test_nvs_keys_partition_layout_is_key_crc_then_erased_flash() -> None:
    part = nvs_keys_partition(KEY)
    assert NVS_KEYS_PARTITION_SIZE == len(part)
    assert KEY == part[:64]
    assert zlib.crc32(KEY, 0xFFFFFFFF) & 0xFFFFFFFF == struct.unpack_from("<I", part, 64)[0]
    assert set(part[68:]) == {0xFF}


def test_key_store_generates_once_and_reuses(tmp_path: Path) -> None:
    store = NvsKeyStore(tmp_path)
    first = store.key_for("kitchen-01")
    assert first == NvsKeyStore(tmp_path).key_for("kitchen-01")
    assert first != store.key_for("garage-door")
    path = tmp_path / "_nvs_keys" / "kitchen-01.bin"
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


def test_key_store_refuses_a_damaged_key_file(tmp_path: Path) -> None:
    (tmp_path / "_nvs_keys").mkdir()
    (tmp_path / "_nvs_keys" / "kitchen-01.bin").write_bytes(b"x" * 10)
    with pytest.raises(ProvisionFailure) as info:
        NvsKeyStore(tmp_path).key_for("kitchen-01")
    assert "10 bytes" in info.value.message


def test_key_store_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "_nvs_keys").mkdir()
    os.mkfifo(tmp_path / "_nvs_keys" / "kitchen-01.bin")
    with pytest.raises(ProvisionFailure) as info:
        NvsKeyStore(tmp_path).key_for("kitchen-01")
    assert "FIFO" in info.value.message


# -- over MQTT, with the real agent ------------------------------------------------------------


async def request_encrypted(broker: Broker, tmp_path: Path) -> tuple[ProvisionedImage, Path]:
    config_dir, secrets_dir = tmp_path / "configs", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (config_dir / "kitchen-01.json").write_text("{}")
    fleet = {k: VALUES[k] for k in ("token_url", "base_url", "wifi_password")}
    (secrets_dir / "_fleet.json").write_text(json.dumps(fleet))
    device = {k: VALUES[k] for k in ("client_id", "client_secret")}
    (secrets_dir / "kitchen-01.json").write_text(json.dumps(device))
    settings = agent_settings(broker.url, config_dir, secrets_dir)
    topics = Topics(settings.topic_root)
    async with running_agent(settings):
        requester = ImageRequester(topics, "station-1", 10)
        router = Router(topics, {TopicKind.PROVISION_RESPONSE: requester.on_response})
        connection = make_connection(settings, broker.url, client_id="station-1", route=router)
        async with connection:
            await requester.attach(connection)
            image = await requester.request("kitchen-01", 0x5000, encrypted=True)
    return image, secrets_dir


async def test_agent_answers_an_encrypted_image_that_decrypts_with_the_stored_key(
    broker: Broker, tmp_path: Path
) -> None:
    image, secrets_dir = await request_encrypted(broker, tmp_path)
    key = (secrets_dir / "_nvs_keys" / "kitchen-01.bin").read_bytes()
    assert VALUES == parse_nvs(decrypt_nvs(image.data, key)).strings("prov")


async def test_agent_answers_the_nvs_keys_partition_of_the_stored_key(
    broker: Broker, tmp_path: Path
) -> None:
    image, secrets_dir = await request_encrypted(broker, tmp_path)
    key = (secrets_dir / "_nvs_keys" / "kitchen-01.bin").read_bytes()
    assert nvs_keys_partition(key) == image.nvs_keys
