"""Per-device NVS encryption keys and the ``nvs_keys`` partition image that carries them.

ESP-IDF keeps the XTS keys of an encrypted NVS partition in a 4 KiB ``nvs_keys`` partition
(type data, subtype 4): the 32-byte data key, the 32-byte tweak key, then the CRC32 of those
64 bytes (little-endian, zlib's crc32 seeded with 0xFFFFFFFF, as Espressif's
``nvs_partition_gen generate-key`` writes it), the rest 0xFF. On a board with flash encryption
the bootloader encrypts that partition in place at first boot; the firmware then reads it with
``nvs_flash_read_security_cfg`` and mounts NVS with ``nvs_flash_secure_init``.

Keys live in ``<secrets_dir>/_nvs_keys/<device_id>.bin`` (64 raw bytes, mode 0600): generated
once with ``secrets.token_bytes``, written atomically under an ``flock`` on that directory (so
two agents agree on one key), and reused, so a re-provisioned board can still read the data it
wrote with its old image. Losing the file means the board's NVS data can never be read again
(back the secrets directory up). Nothing here logs or returns a key in a message.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from pathlib import Path

from broker_agent.errors import ProvisionFailure, RefusedFile
from broker_agent.files import locked_directory, read_regular_file, write_atomically
from broker_agent.provisioning.nvs_image import NVS_ENCRYPTION_KEY_BYTES
from firmware_contracts.codes import ProvisionErrorCode

NVS_KEYS_DIR = "_nvs_keys"
NVS_KEYS_PARTITION_SIZE = 0x1000


def nvs_keys_partition(key: bytes) -> bytes:
    """The 4 KiB ``nvs_keys`` partition image holding ``key`` (64 bytes) and its CRC."""
    if len(key) != NVS_ENCRYPTION_KEY_BYTES:
        raise ValueError(f"an NVS key pair is {NVS_ENCRYPTION_KEY_BYTES} bytes")
    crc = zlib.crc32(key, 0xFFFFFFFF) & 0xFFFFFFFF
    head = key + struct.pack("<I", crc)
    return head + b"\xff" * (NVS_KEYS_PARTITION_SIZE - len(head))


class NvsKeyStore:
    """The devices' NVS keys under ``<secrets_dir>/_nvs_keys/`` (see the module docstring)."""

    def __init__(self, secrets_dir: Path) -> None:
        self.directory = secrets_dir / NVS_KEYS_DIR

    def key_for(self, device_id: str) -> bytes:
        """The device's key, generated and stored on first use. Blocking (fsync, flock).

        Raises ``ProvisionFailure`` (``internal_error``) when the key file is unusable: a wrong
        size, not a regular file, or the directory cannot be written.
        """
        path = self.directory / f"{device_id}.bin"
        found = self._read(path)
        if found is not None:
            return found
        try:
            with locked_directory(self.directory):
                found = self._read(path)  # another agent may have made it meanwhile
                if found is not None:
                    return found
                key = secrets.token_bytes(NVS_ENCRYPTION_KEY_BYTES)
                write_atomically(path, key, 0o600)
        except OSError as exc:
            raise ProvisionFailure(
                ProvisionErrorCode.INTERNAL_ERROR,
                f"cannot store the NVS key of {device_id}: {exc.strerror or type(exc).__name__}",
            ) from None
        return key

    def _read(self, path: Path) -> bytes | None:
        try:
            data, _ = read_regular_file(path, NVS_ENCRYPTION_KEY_BYTES, inside=self.directory)
        except FileNotFoundError:
            return None
        except RefusedFile as exc:
            raise ProvisionFailure(
                ProvisionErrorCode.INTERNAL_ERROR, f"NVS key file {exc.path} {exc.reason}"
            ) from None
        if len(data) != NVS_ENCRYPTION_KEY_BYTES:
            raise ProvisionFailure(
                ProvisionErrorCode.INTERNAL_ERROR,
                f"NVS key file {path.name} is {len(data)} bytes, not {NVS_ENCRYPTION_KEY_BYTES}",
            )
        return data
