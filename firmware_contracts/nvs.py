"""The provisioning blob's NVS layout: namespace, keys, format limits and partition-size rules.

Contract section 3. The blob is an ESP-IDF NVS partition image, format version 2, holding one
namespace (``prov``) of string entries. This module only states the layout; building an image
is ``broker_agent.provisioning.nvs_image``.

The limits below are those of ESP-IDF's NVS format as written by ``esp-idf-nvs-partition-gen``
(measured with 0.3.0):

- a page is 4096 bytes: a 32-byte header, a 32-byte entry-state bitmap, 126 entries of 32 bytes;
- a string's bytes plus its NUL must fit in one page beside its header entry, so a V2 string
  value holds at most 3967 UTF-8 bytes (3968 does not fit a page);
- a read/write partition needs at least three pages, one of which stays reserved (empty) for
  the firmware's garbage collection.
"""

from __future__ import annotations

from dataclasses import dataclass

NVS_NAMESPACE = "prov"
NVS_FORMAT = "nvs-v2"

NVS_PAGE_SIZE = 0x1000
NVS_PAGE_HEADER_SIZE = 32
NVS_ENTRY_BITMAP_SIZE = 32
NVS_ENTRY_SIZE = 32
NVS_ENTRIES_PER_PAGE = 126

MIN_PARTITION_SIZE = 0x3000
PARTITION_ALIGN = 0x1000
MAX_PARTITION_SIZE = 0x100000

NVS_KEY_MAX_LENGTH = 15
"""Longest key (and namespace) name, in bytes; the 16-byte key field keeps a NUL."""

NVS_STRING_MAX_BYTES = 3967
"""Most UTF-8 bytes a V2 string value may hold, not counting its terminating NUL."""

PARTITION_SIZE_MESSAGE = (
    f"partition_size must be a multiple of {PARTITION_ALIGN} and >= {MIN_PARTITION_SIZE}"
)
PARTITION_SIZE_MAX_MESSAGE = f"{PARTITION_SIZE_MESSAGE} and <= {MAX_PARTITION_SIZE}"


@dataclass(frozen=True, slots=True)
class NvsKey:
    """One key of the ``prov`` namespace; every value is an NVS string."""

    name: str
    required: bool
    description: str

    def __post_init__(self) -> None:
        if not 0 < len(self.name.encode("ascii")) <= NVS_KEY_MAX_LENGTH:
            raise ValueError(f"NVS key name must be 1..{NVS_KEY_MAX_LENGTH} ASCII characters")


PROV_KEYS: tuple[NvsKey, ...] = (
    NvsKey("device_key", True, "per-device value, defaults to the device_id"),
    NvsKey("client_id", True, "per-device OAuth client id"),
    NvsKey("client_secret", True, "per-device OAuth client secret"),
    NvsKey("token_url", True, "fleet value, per-device override"),
    NvsKey("base_url", True, "fleet value, per-device override"),
    NvsKey("mqtt_url", False, "fleet value, per-device override; omitted when unset"),
    NvsKey("wifi_ssid", False, "fleet value, per-device override; omitted when unset"),
    NvsKey("wifi_password", False, "fleet value, per-device override; omitted when unset"),
)
"""The keys in the contract's table order, which is also the order they are written in."""

PROV_KEY_NAMES: frozenset[str] = frozenset(key.name for key in PROV_KEYS)
REQUIRED_KEYS: frozenset[str] = frozenset(key.name for key in PROV_KEYS if key.required)
SECRET_KEYS: frozenset[str] = frozenset({"client_secret", "wifi_password"})


def partition_size_error(size: int) -> str | None:
    """Return the contract's error message for an unusable partition size, or None if it is fine."""
    if isinstance(size, bool) or not isinstance(size, int):
        return PARTITION_SIZE_MESSAGE
    if size > MAX_PARTITION_SIZE:
        return PARTITION_SIZE_MAX_MESSAGE
    if size < MIN_PARTITION_SIZE or size % PARTITION_ALIGN:
        return PARTITION_SIZE_MESSAGE
    return None
