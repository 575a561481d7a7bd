"""Pydantic models of every JSON payload in the contract, and the canonical config hash.

Models are strict about what they accept (``extra="forbid"``) so that a drift between the
Python side and the firmware shows up as a validation error, and they dump without ``None``
fields that the contract marks optional (``dump()``), except the fields where ``null`` is part
of the contract (``ConfigApplied.error``, ``ConfigSetOk.sha256``...).

Parse wire bytes with ``Model.from_json(data)``: the contract's strict JSON rules
(``json_rules.loads_strict``) first, then the model. It raises ``StrictJsonError`` or pydantic's
``ValidationError``, both ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from firmware_contracts.codes import (
    AgentEventName,
    ConfigErrorCode,
    ConfigWriteErrorCode,
    FlashAfter,
    FlashErrorCode,
    FlashPhase,
    FlashStatus,
    PresenceState,
    ProvisionErrorCode,
)
from firmware_contracts.identifiers import AgentId, DeviceId, RequestId, StationId
from firmware_contracts.json_rules import loads_strict

SHA256_PATTERN = r"^[0-9a-f]{64}$"
MD5_PATTERN = r"^[0-9a-f]{32}$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"

Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
Md5 = Annotated[str, Field(pattern=MD5_PATTERN)]
Timestamp = Annotated[str, Field(pattern=TIMESTAMP_PATTERN)]
Mac = Annotated[str, Field(pattern=MAC_PATTERN)]
Progress = Annotated[int, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=0)]


def utc_timestamp(moment: datetime | float | None = None) -> str:
    """RFC 3339 UTC with second precision: ``2026-11-25T19:21:46Z``."""
    if moment is None:
        moment = time.time()
    if isinstance(moment, (int, float)):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_config(config: dict[str, Any]) -> bytes:
    """The bytes the config hash is taken over (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_config(config)).hexdigest()


class ContractModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse a payload under the contract's JSON rules (6.5), then validate it."""
        return cls.model_validate(loads_strict(data))

    def null_fields(self) -> frozenset[str]:
        """Top-level fields written as ``null`` when ``None`` instead of being left out."""
        return frozenset()

    def dump(self) -> dict[str, Any]:
        """The wire form: JSON-ready, optional fields left out when unset."""
        data = self.model_dump(mode="json", exclude_none=True)
        keep = self.null_fields()
        if not keep:
            return data
        ordered: dict[str, Any] = {}
        for name in (*type(self).model_fields, *(self.model_extra or {})):
            if name in data:
                ordered[name] = data[name]
            elif name in keep:
                ordered[name] = None
        return ordered

    def to_json(self) -> bytes:
        if not self.null_fields():
            return self.model_dump_json(exclude_none=True).encode("utf-8")
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- 1. Device configuration -------------------------------------------------------------


class ConfigEnvelope(ContractModel):
    """Retained on ``{root}/devices/{device_id}/config``."""

    v: Literal[1] = 1
    device_id: DeviceId
    sha256: Sha256
    updated_at: Timestamp
    config: dict[str, Any]


class ConfigApplyError(ContractModel):
    """Why the firmware could not apply a config; ``code`` is the firmware's own."""

    code: str
    message: str


class ConfigApplied(ContractModel):
    """The firmware's acknowledgement, retained on ``.../config/applied`` (v1.1, 6.1).

    Published after every config the device receives, a duplicate sha256 included. ``error`` is
    ``null`` when ``ok``, else ``{"code", "message"}``; it is always written, as ``null`` too.
    ``ts`` is optional: v1 firmware sent no ``ts`` (and v1 acks were not retained). A plain
    string ``error`` is the v1 form docs/firmware.md showed: still accepted from the wire so a
    v1 device's failure counts as ``failed``, never written by v1.1 firmware.
    """

    sha256: Sha256
    ok: bool
    error: (
        ConfigApplyError | Annotated[str, Field(json_schema_extra={"deprecated": True})] | None
    ) = None
    ts: Timestamp | None = None

    def null_fields(self) -> frozenset[str]:
        return frozenset({"error"})


class DeviceStatus(ContractModel):
    """Device presence, retained on ``{root}/devices/{device_id}/status`` (v1.1, 6.1).

    Published by the firmware after it connects; its MQTT will is the retained
    ``{"state": "offline"}`` (``DEVICE_STATUS_WILL``). Fields beyond these are allowed (the
    firmware's own: uptime, RSSI, ...) and kept as they are.
    """

    model_config = ConfigDict(extra="allow")

    state: PresenceState
    fw_version: str | None = None
    since: Timestamp | None = None

    def null_fields(self) -> frozenset[str]:
        return frozenset(name for name, value in (self.model_extra or {}).items() if value is None)


# -- 2. Agent presence and events ---------------------------------------------------------


class ErrorDetail(ContractModel):
    code: str
    message: str
    cause: ErrorDetail | None = None


class AgentStatus(ContractModel):
    state: PresenceState
    agent_id: AgentId
    version: str | None = None
    devices: Annotated[int, Field(ge=0)] | None = None
    since: Timestamp | None = None


class AgentEvent(ContractModel):
    event: AgentEventName
    ts: Timestamp
    device_id: str | None = None  # may be the invalid name that was rejected
    file: str | None = None
    sha256: Sha256 | None = None  # config_written: null after a delete (always written there)
    error: ErrorDetail | None = None
    # a reconcile or burst that changed more devices than the agent's event limit is reported
    # as one event with the number of devices instead of one event per device
    count: Annotated[int, Field(ge=1)] | None = None
    # prune_blocked
    reason: str | None = None
    would_clear: Annotated[int, Field(ge=0)] | None = None
    fleet_size: Annotated[int, Field(ge=0)] | None = None
    # provisioned
    partition_size: int | None = None
    md5: Md5 | None = None
    request_id: str | None = None
    # config_written (v1.1, 6.3): device_id, request_id, sha256, and who, when known
    user: str | None = None  # the MQTT user name of the writer

    @model_validator(mode="after")
    def _config_written_says_what_and_which(self) -> Self:
        if self.event is AgentEventName.CONFIG_WRITTEN and (
            self.device_id is None or self.request_id is None
        ):
            raise ValueError("a config_written event carries device_id and request_id")
        return self

    def null_fields(self) -> frozenset[str]:
        if self.event is AgentEventName.CONFIG_WRITTEN:
            return frozenset({"sha256"})
        return frozenset()


class FleetSummary(ContractModel):
    """Retained on ``{root}/agents/{agent_id}/fleet`` (v1.1, 6.2): devices by ``FleetState`` and
    by ``DevicePresence``.

    ``devices`` counts configs, i.e. managed devices: it is the sum of the five config states,
    and presence (``online + offline + unknown``) is counted over the same devices. Devices
    with no config are counted only in ``unmanaged``.
    """

    devices: Count
    in_sync: Count
    failed: Count
    pending: Count
    stale: Count
    never_applied: Count
    unmanaged: Count
    online: Count
    offline: Count
    unknown: Count
    ts: Timestamp

    @model_validator(mode="after")
    def _counts_add_up(self) -> Self:
        states = self.in_sync + self.failed + self.pending + self.stale + self.never_applied
        if states != self.devices:
            raise ValueError(f"the config states add up to {states}, not devices={self.devices}")
        presence = self.online + self.offline + self.unknown
        if presence != self.devices:
            raise ValueError(f"online+offline+unknown is {presence}, not devices={self.devices}")
        return self


# -- 3. Provisioning ----------------------------------------------------------------------


class ProvisionRequest(ContractModel):
    request_id: RequestId | None = None
    partition_size: Annotated[int, Field(strict=True)]
    # Project extension (issue 14): ask for an NVS image encrypted with the device's XTS keys,
    # answered together with the ``nvs_keys`` partition image that holds those keys.
    encrypted: Annotated[bool, Field(strict=True)] | None = None


class NvsKeysImage(ContractModel):
    """The ``nvs_keys`` partition image (4 KiB: the XTS key pair and its CRC32)."""

    size: Literal[4096] = 4096
    encoding: Literal["base64"] = "base64"
    data: str
    md5: Md5


class ProvisionOk(ContractModel):
    request_id: str
    status: Literal["ok"] = "ok"
    device_id: DeviceId
    partition_size: int
    format: Literal["nvs-v2"] = "nvs-v2"
    namespace: str
    keys: list[str]
    encoding: Literal["base64"] = "base64"
    data: str
    md5: Md5
    encrypted: bool | None = None  # absent (v1) means false
    nvs_keys: NvsKeysImage | None = None

    @model_validator(mode="after")
    def _keys_with_encryption(self) -> Self:
        if bool(self.encrypted) != (self.nvs_keys is not None):
            raise ValueError("nvs_keys is present exactly when the image is encrypted")
        return self


class ProvisionErrorDetail(ContractModel):
    code: ProvisionErrorCode
    message: str


class ProvisionError(ContractModel):
    request_id: str
    status: Literal["error"] = "error"
    device_id: str
    error: ProvisionErrorDetail


# -- 4. Flash station ---------------------------------------------------------------------


class PortInfo(ContractModel):
    port: str
    description: str | None = None
    serial_number: str | None = None
    vid: int | None = None
    pid: int | None = None
    busy: bool = False


class StationStatus(ContractModel):
    state: PresenceState
    station_id: StationId
    ports: list[PortInfo] | None = None
    version: str | None = None


class FlashRequest(ContractModel):
    request_id: RequestId | None = None
    device_id: DeviceId
    port: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    baud: Annotated[int, Field(strict=True, ge=9600, le=5_000_000)] = 460800
    after: FlashAfter = FlashAfter.NO_RESET
    expected_mac: str | None = None
    force: Annotated[bool, Field(strict=True)] = False  # rewrite even when the MD5 matches


class FlashCancel(ContractModel):
    request_id: RequestId


class ChipInfo(ContractModel):
    type: str
    mac: Mac


class PartitionInfo(ContractModel):
    offset: int
    size: int


class FlashErrorDetail(ContractModel):
    code: FlashErrorCode
    message: str
    cause: ErrorDetail | None = None


class FlashEvent(ContractModel):
    request_id: str
    status: FlashStatus
    phase: FlashPhase
    progress: Progress
    device_id: str | None = None
    port: str | None = None
    chip: ChipInfo | None = None
    partition: PartitionInfo | None = None
    md5: Md5 | None = None
    error: FlashErrorDetail | None = None
    skipped: bool | None = None  # on ok: the partition already held the image, nothing written


# -- 6.3 Config writes --------------------------------------------------------------------

_OPERATIONS = ("config", "merge", "delete")


def _config_set_schema(schema: dict[str, Any]) -> None:
    """Exactly one operation, none of them null; ``if_sha256`` has no default (absent != null)."""
    properties = schema["properties"]
    properties["config"] = {"type": "object", "title": "Config"}
    properties["merge"] = {"type": "object", "title": "Merge"}
    properties["delete"] = {"const": True, "title": "Delete"}
    properties["if_sha256"].pop("default", None)
    schema["oneOf"] = [{"required": [name]} for name in _OPERATIONS]


class ConfigSetRequest(ContractModel):
    """A write on ``{root}/devices/{device_id}/config/set`` (v1.1, 6.3).

    Exactly one of ``config`` (replace the file), ``merge`` (an RFC 7396 merge patch onto the
    current file) or ``delete`` (``true``); a key that is not used must be absent, not null.

    ``if_sha256`` distinguishes three cases, so read it through ``has_precondition`` /
    ``precondition_holds`` rather than comparing it with ``None``:

    - absent: write unconditionally;
    - a sha256: write only if the current config has that sha256;
    - ``null``: write only if the device has no config yet.

    ``dump()`` and ``to_json()`` keep an explicit ``"if_sha256": null``; equality tells the
    absent case from the null one.
    """

    model_config = ConfigDict(json_schema_extra=_config_set_schema)

    request_id: RequestId | None = None
    config: dict[str, Any] | None = None
    merge: dict[str, Any] | None = None
    delete: Literal[True] | None = None
    if_sha256: Sha256 | None = None

    @field_validator("delete", mode="before")
    @classmethod
    def _delete_is_the_json_true(cls, value: object) -> object:
        if value is not None and value is not True:  # not 1, not "true"
            raise ValueError("delete must be true")
        return value

    @model_validator(mode="after")
    def _exactly_one_operation(self) -> Self:
        given = [name for name in _OPERATIONS if name in self.model_fields_set]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"exactly one of config, merge, delete is required (found {found})")
        if getattr(self, given[0]) is None:
            kind = "true" if given[0] == "delete" else "an object"
            raise ValueError(f"{given[0]} must be {kind}, not null")
        return self

    @property
    def operation(self) -> Literal["config", "merge", "delete"]:
        """Which write this is: ``config`` (replace), ``merge`` or ``delete``."""
        if self.config is not None:
            return "config"
        return "merge" if self.merge is not None else "delete"

    @property
    def has_precondition(self) -> bool:
        """True when the request carries ``if_sha256`` (a sha256 or ``null``)."""
        return "if_sha256" in self.model_fields_set

    def precondition_holds(self, current_sha256: str | None) -> bool:
        """Whether the write may go ahead; ``current_sha256`` is None when there is no config."""
        return not self.has_precondition or self.if_sha256 == current_sha256

    def null_fields(self) -> frozenset[str]:
        return frozenset({"if_sha256"}) if self.has_precondition else frozenset()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigSetRequest):
            return NotImplemented
        return super().__eq__(other) and self.has_precondition == other.has_precondition


class ConfigSetOk(ContractModel):
    """Answer to a write, once the retained config is published (or cleared, ``sha256: null``)."""

    request_id: str
    status: Literal["ok"] = "ok"
    device_id: DeviceId
    sha256: Sha256 | None

    def null_fields(self) -> frozenset[str]:
        return frozenset({"sha256"})


class ConfigWriteErrorDetail(ContractModel):
    code: ConfigWriteErrorCode
    message: str


class ConfigSetError(ContractModel):
    request_id: str
    status: Literal["error"] = "error"
    device_id: str
    error: ConfigWriteErrorDetail


# The payloads that get a JSON Schema, by file stem.
SCHEMA_MODELS: dict[str, type[ContractModel]] = {
    "config_envelope": ConfigEnvelope,
    "config_applied": ConfigApplied,
    "device_status": DeviceStatus,
    "agent_status": AgentStatus,
    "agent_event": AgentEvent,
    "fleet_summary": FleetSummary,
    "config_set_request": ConfigSetRequest,
    "config_set_ok": ConfigSetOk,
    "config_set_error": ConfigSetError,
    "provision_request": ProvisionRequest,
    "provision_ok": ProvisionOk,
    "provision_error": ProvisionError,
    "station_status": StationStatus,
    "flash_request": FlashRequest,
    "flash_cancel": FlashCancel,
    "flash_event": FlashEvent,
}

ErrorCodes = ConfigErrorCode | ProvisionErrorCode | FlashErrorCode | ConfigWriteErrorCode

DEVICE_STATUS_WILL = DeviceStatus(state=PresenceState.OFFLINE)
"""The firmware's MQTT will on its status topic (retained, QoS 1)."""
