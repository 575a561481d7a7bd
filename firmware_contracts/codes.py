"""Every string constant of the wire contract that is not a topic: codes, phases, states.

These enums are the single definition; the agent, the station, the generated C header and the
JSON Schemas all take their values from here. They are ``StrEnum`` so a member compares equal to
(and serialises as) its wire string.
"""

from __future__ import annotations

from enum import StrEnum

CONTRACT_VERSION = 1


class ConfigErrorCode(StrEnum):
    """Why a device config file was not published (event ``config_rejected``)."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    INVALID_DEVICE_ID = "invalid_device_id"
    SCHEMA_VIOLATION = "schema_violation"
    UNREADABLE = "unreadable"


class AgentEventName(StrEnum):
    """Events published on ``{root}/agents/{agent_id}/events``."""

    CONFIG_PUBLISHED = "config_published"
    CONFIG_CLEARED = "config_cleared"
    CONFIG_REJECTED = "config_rejected"
    PRUNE_BLOCKED = "prune_blocked"
    PROVISIONED = "provisioned"


class ProvisionErrorCode(StrEnum):
    """Error codes of a provisioning response."""

    INVALID_REQUEST = "invalid_request"
    INVALID_PARTITION_SIZE = "invalid_partition_size"
    UNKNOWN_DEVICE = "unknown_device"
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    INVALID_RESPONSE_TOPIC = "invalid_response_topic"
    RETAINED_REQUEST_REJECTED = "retained_request_rejected"
    INTERNAL_ERROR = "internal_error"


class FlashErrorCode(StrEnum):
    """Error codes of a flash job's final ``error`` event."""

    INVALID_REQUEST = "invalid_request"
    PORT_REQUIRED = "port_required"
    PORT_NOT_FOUND = "port_not_found"
    PORT_BUSY = "port_busy"
    CONNECT_FAILED = "connect_failed"
    BOOTLOADER_NOT_ENTERED = "bootloader_not_entered"
    PARTITION_TABLE_UNREADABLE = "partition_table_unreadable"
    NVS_PARTITION_MISSING = "nvs_partition_missing"
    NVS_SUBTYPE_MISMATCH = "nvs_subtype_mismatch"
    BLOB_SIZE_MISMATCH = "blob_size_mismatch"
    PROVISIONING_FAILED = "provisioning_failed"
    PROVISIONING_TIMEOUT = "provisioning_timeout"
    WRITE_FAILED = "write_failed"
    VERIFY_FAILED = "verify_failed"
    MAC_MISMATCH = "mac_mismatch"
    ABORTED = "aborted"
    INTERNAL_ERROR = "internal_error"


class FlashStatus(StrEnum):
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    OK = "ok"
    ERROR = "error"


class FlashPhase(StrEnum):
    """Phases of a flash job, in the order they happen."""

    CONNECTING = "connecting"
    READING_PARTITION_TABLE = "reading_partition_table"
    FETCHING_NVS = "fetching_nvs"
    WRITING = "writing"
    VERIFYING = "verifying"
    DONE = "done"


class PresenceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class FlashAfter(StrEnum):
    """What the station does with the chip after a job."""

    NO_RESET = "no_reset"
    HARD_RESET = "hard_reset"
