"""Encrypted NVS images and the nvs_keys partition, checked by decrypting them ourselves."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from broker_agent.errors import ProvisionFailure
from broker_agent.provisioning.nvs_image import build_nvs_image
from broker_agent.provisioning.nvs_keys import (
    NVS_KEYS_PARTITION_SIZE,
    NvsKeyStore,
    nvs_keys_partition,
)
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
