"""Every string constant of the wire contract that is not a topic: codes, phases, states.

These enums are the single definition; the agent, the station, the generated C header and the
JSON Schemas all take their values from here. They are ``StrEnum`` so a member compares equal to
(and serialises as) its wire string.
"""

from __future__ import annotations

from enum import StrEnum

CONTRACT_VERSION = 1
"""The contract's major version: schema ids, the envelope's ``"v"``; v1.1 only adds to v1."""
CONTRACT_MINOR_VERSION = 1
"""v1.1 (CONTRACT.md section 6): device presence, retained acks, fleet state, config writes."""
CONTRACT_REVISION = f"{CONTRACT_VERSION}.{CONTRACT_MINOR_VERSION}"

DEFAULT_PENDING_GRACE_S = 300
"""How long a config may wait for its ack before it counts as ``stale``/``never_applied``
(``BROKER_AGENT_PENDING_GRACE_S``); see ``FleetState``."""


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
    CONFIG_WRITTEN = "config_written"  # v1.1: a config/set request changed a config


class ProvisionErrorCode(StrEnum):
    """Error codes of a provisioning response."""

    INVALID_REQUEST = "invalid_request"
    INVALID_PARTITION_SIZE = "invalid_partition_size"
    UNKNOWN_DEVICE = "unknown_device"
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    INVALID_RESPONSE_TOPIC = "invalid_response_topic"
    RETAINED_REQUEST_REJECTED = "retained_request_rejected"
    INTERNAL_ERROR = "internal_error"
    INVALID_CREDENTIALS = "invalid_credentials"  # v1.1 (6.6): secrets set another device_key


class ConfigWriteErrorCode(StrEnum):
    """Error codes of a ``config/set`` response (v1.1, contract 6.3)."""

    INVALID_REQUEST = "invalid_request"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    SCHEMA_VIOLATION = "schema_violation"
    INVALID_JSON = "invalid_json"
    CONFLICT = "conflict"
    UNKNOWN_DEVICE = "unknown_device"
    WRITES_DISABLED = "writes_disabled"
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
    NVS_PARTITION_OUT_OF_RANGE = "nvs_partition_out_of_range"  # v1.1 (6.5): beyond the flash
    NVS_ENCRYPTION_UNSUPPORTED = "nvs_encryption_unsupported"  # v1.1 (6.5): encrypted / nvs_keys


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
    """The ``state`` a client publishes about itself: agent, station and (v1.1) device status."""

    ONLINE = "online"
    OFFLINE = "offline"


class DevicePresence(StrEnum):
    """A device's presence as operators compute it from its retained ``status`` (v1.1, 6.2).

    ``unknown``: the broker retains no status for the device (e.g. v1 firmware).
    """

    ONLINE = "online"
    OFFLINE = "offline"  # a retained offline status, or its will
    UNKNOWN = "unknown"


class FleetState(StrEnum):
    """A device's config state, computed from the retained ``config``, ``config/applied`` and
    ``status`` (v1.1, contract 6.2); "young" means younger than the pending grace period
    (``DEFAULT_PENDING_GRACE_S``), measured from the envelope's ``updated_at``."""

    IN_SYNC = "in_sync"  # the ack's sha256 is the config's and ok is true
    FAILED = "failed"  # the ack's sha256 is the config's and ok is false
    PENDING = "pending"  # no ack for this sha256 yet, config young
    STALE = "stale"  # an ack for another sha256, config old
    NEVER_APPLIED = "never_applied"  # no ack at all, config old
    UNMANAGED = "unmanaged"  # an ack or a status retained for a device with no config


class FlashAfter(StrEnum):
    """What the station does with the chip after a job."""

    NO_RESET = "no_reset"
    HARD_RESET = "hard_reset"
