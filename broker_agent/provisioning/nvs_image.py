"""Build the provisioning blob: an ESP-IDF NVS partition image (format v2) in memory.

The image is written by ``esp-idf-nvs-partition-gen``'s own writer (``nvs_open`` /
``write_entry`` / ``nvs_close`` on an ``io.BytesIO``), which gives the same bytes as its CSV
command line without temporary files, subprocesses or ``sys.exit``. Everything that writer
would get wrong silently or report by exiting is checked here first:

- the partition size (the writer takes the size *without* its reserved page and loops forever
  on a size that is not a multiple of a page);
- key names (the 15-character limit is only checked on the CSV path; ``sta.*`` / ``ap.*``
  names would add Wi-Fi entries), so only the contract's keys are accepted;
- values: strings, valid UTF-8, no NUL, at most ``NVS_STRING_MAX_BYTES`` bytes;
- that the entries fit in the partition, with the writer's own packing rule, so that a too
  small partition is reported with the size that would do.

Errors are ``NvsImageError`` carrying the contract's provisioning error code. Their messages
name keys and problems, never a value: values are credentials.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

from esp_idf_nvs_partition_gen import nvs_partition_gen

from broker_agent.errors import ProvisionFailure
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import (
    NVS_ENTRIES_PER_PAGE,
    NVS_ENTRY_SIZE,
    NVS_KEY_MAX_LENGTH,
    NVS_NAMESPACE,
    NVS_PAGE_SIZE,
    NVS_STRING_MAX_BYTES,
    PROV_KEY_NAMES,
    PROV_KEYS,
    REQUIRED_KEYS,
    partition_size_error,
)

__all__ = ["NvsImageError", "build_nvs_image", "required_partition_size"]

NVS_ENCRYPTION_KEY_BYTES = 64
"""An NVS XTS key pair: 32 bytes of data-encryption key, then 32 of tweak key."""

_SHOWN_KEY_CHARS = 32
"""An unknown key name is shown in an error up to this length."""

_LIBRARY_SIZE_ERRORS = (nvs_partition_gen.PageFullError, nvs_partition_gen.InsufficientSizeError)


class NvsImageError(ProvisionFailure):
    """The image cannot be built; ``code`` is the provisioning error code to answer with."""

    def __repr__(self) -> str:
        return f"NvsImageError(code={self.code.value!r}, message={self.message!r})"


def build_nvs_image(
    values: Mapping[str, str], size: int, *, encryption_key: bytes | None = None
) -> bytes:
    """Return an NVS v2 image of exactly ``size`` bytes holding ``values`` in namespace ``prov``.

    ``values`` maps contract key names to strings; the required keys must be present, optional
    keys that are absent are not written. Entries are written in the contract's table order, so
    the same input always gives the same bytes.

    With ``encryption_key`` (the 64-byte XTS key pair of the device's ``nvs_keys`` partition),
    every entry is encrypted by Espressif's writer with AES-256-XTS, the entry's offset in the
    partition as the tweak, as ``nvs_flash_secure_init`` expects; page headers stay plain.

    Raises ``NvsImageError``: ``invalid_partition_size`` when ``size`` breaks the contract's
    rules or is too small for the entries, ``credentials_unavailable`` when a key or value is
    missing or unusable.
    """
    size_problem = partition_size_error(size)
    if size_problem is not None:
        raise NvsImageError(ProvisionErrorCode.INVALID_PARTITION_SIZE, size_problem)
    encoded = _validated_values(values)
    needed = _required_size(len(data) for data in encoded.values())
    if needed > size:
        raise NvsImageError(
            ProvisionErrorCode.INVALID_PARTITION_SIZE,
            f"partition_size {size} is too small for the provisioning entries:"
            f" at least {needed} bytes are needed",
        )
    if encryption_key is not None and len(encryption_key) != NVS_ENCRYPTION_KEY_BYTES:
        raise NvsImageError(
            ProvisionErrorCode.INTERNAL_ERROR,
            f"an NVS encryption key is {NVS_ENCRYPTION_KEY_BYTES} bytes",
        )
    image = _write_image(encoded, size, encryption_key)
    if len(image) != size:
        raise NvsImageError(
            ProvisionErrorCode.INTERNAL_ERROR,
            f"NVS writer produced {len(image)} bytes instead of {size}",
        )
    return image


def required_partition_size(values: Mapping[str, str]) -> int:
    """Return the smallest partition size that holds ``values`` (validated as for a build)."""
    encoded = _validated_values(values)
    return _required_size(len(data) for data in encoded.values())


def _validated_values(values: Mapping[str, object]) -> dict[str, bytes]:
    """Check every key and value; return the UTF-8 values in the contract's key order.

    All problems are collected and reported in one ``credentials_unavailable`` error.
    """
    problems: list[str] = []
    encoded: dict[str, bytes] = {}
    for key, value in values.items():
        key_problem = _key_problem(key)
        if key_problem is not None:
            problems.append(key_problem)
            continue
        value_problem, data = _value_problem(key, value)
        if value_problem is not None:
            problems.append(value_problem)
        else:
            encoded[key] = data
    problems.extend(
        f"{key.name}: required key is missing"
        for key in PROV_KEYS
        if key.required and key.name not in values
    )
    if problems:
        raise NvsImageError(
            ProvisionErrorCode.CREDENTIALS_UNAVAILABLE,
            "provisioning values rejected: " + "; ".join(problems),
        )
    return {key.name: encoded[key.name] for key in PROV_KEYS if key.name in encoded}


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"key names must be strings, not {type(key).__name__}"
    shown = repr(key[:_SHOWN_KEY_CHARS]) + ("..." if len(key) > _SHOWN_KEY_CHARS else "")
    if len(key) > NVS_KEY_MAX_LENGTH:
        return f"key {shown} is longer than {NVS_KEY_MAX_LENGTH} characters"
    if key not in PROV_KEY_NAMES:
        return f"key {shown} is not a provisioning key"
    return None


def _value_problem(key: str, value: object) -> tuple[str | None, bytes]:
    if not isinstance(value, str):
        return f"{key}: value must be a string, not {type(value).__name__}", b""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{key}: value is not encodable as UTF-8", b""
    if b"\x00" in data:
        return f"{key}: value contains a NUL character", b""
    if len(data) > NVS_STRING_MAX_BYTES:
        return (
            f"{key}: value is {len(data)} UTF-8 bytes, more than the"
            f" {NVS_STRING_MAX_BYTES} an NVS string holds",
            b"",
        )
    if not data and key in REQUIRED_KEYS:
        return f"{key}: required value is empty", b""
    return None, data


def _required_size(string_lengths: Iterable[int]) -> int:
    """Smallest partition size for the namespace entry plus strings of these byte lengths.

    Mirrors the writer's packing: an item takes one header entry plus one entry per 32 bytes
    of data (the NUL included) and never spans pages; a string goes to a new page when it would
    reach the page's last entry. The reserved page comes on top of the written ones.
    """
    pages = 1
    used = 1  # the namespace entry
    for length in string_lengths:
        entries = 1 + (length + 1 + NVS_ENTRY_SIZE - 1) // NVS_ENTRY_SIZE
        if used + entries >= NVS_ENTRIES_PER_PAGE:
            pages += 1
            used = 0
        used += entries
    return max(3, pages + 1) * NVS_PAGE_SIZE


def _write_image(
    encoded: Mapping[str, bytes], size: int, encryption_key: bytes | None = None
) -> bytes:
    """Write the validated entries with the library's in-memory writer (never prints or exits)."""
    output = io.BytesIO()
    # input_size excludes the reserved page; the writer adds it when closing. A 64-byte key
    # is used as raw bytes (anything else would be taken for hex text).
    nvs = nvs_partition_gen.nvs_open(
        output,
        size - NVS_PAGE_SIZE,
        nvs_partition_gen.Page.VERSION2,
        is_encrypt=encryption_key is not None,
        key=encryption_key,
    )
    try:
        nvs_partition_gen.write_entry(nvs, NVS_NAMESPACE, "namespace", "", "")
        for key, data in encoded.items():
            nvs_partition_gen.write_entry(nvs, key, "data", "string", data.decode("utf-8"))
        nvs_partition_gen.nvs_close(nvs)
    # Both unreachable after validation; kept so a library change cannot escape untranslated.
    # ``from None``: the library's messages are not ours to pass on.
    except _LIBRARY_SIZE_ERRORS:
        raise NvsImageError(
            ProvisionErrorCode.INVALID_PARTITION_SIZE,
            f"partition_size {size} is too small for the provisioning entries",
        ) from None
    except nvs_partition_gen.InputError:
        raise NvsImageError(
            ProvisionErrorCode.CREDENTIALS_UNAVAILABLE,
            "the NVS writer rejected a provisioning value",
        ) from None
    return output.getvalue()
