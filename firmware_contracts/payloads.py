"""Pydantic models of every JSON payload in the contract, and the canonical config hash.

Models are strict about what they accept (``extra="forbid"``) so that a drift between the
Python side and the firmware shows up as a validation error, and they dump without ``None``
fields that the contract marks optional (``dump()``).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from firmware_contracts.codes import (
    AgentEventName,
    ConfigErrorCode,
    FlashAfter,
    FlashErrorCode,
    FlashPhase,
    FlashStatus,
    PresenceState,
    ProvisionErrorCode,
)
from firmware_contracts.identifiers import AgentId, DeviceId, RequestId, StationId

SHA256_PATTERN = r"^[0-9a-f]{64}$"
MD5_PATTERN = r"^[0-9a-f]{32}$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"

Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
Md5 = Annotated[str, Field(pattern=MD5_PATTERN)]
Timestamp = Annotated[str, Field(pattern=TIMESTAMP_PATTERN)]
Mac = Annotated[str, Field(pattern=MAC_PATTERN)]
Progress = Annotated[int, Field(ge=0, le=100)]


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

    def dump(self) -> dict[str, Any]:
        """The wire form: JSON-ready, optional fields left out when unset."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")


# -- 1. Device configuration -------------------------------------------------------------


class ConfigEnvelope(ContractModel):
    """Retained on ``{root}/devices/{device_id}/config``."""

    v: Literal[1] = 1
    device_id: DeviceId
    sha256: Sha256
    updated_at: Timestamp
    config: dict[str, Any]


class ConfigApplied(ContractModel):
    """Device -> agent acknowledgement on ``.../config/applied``."""

    sha256: Sha256
    ok: bool
    error: str | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")  # "error": null is part of the contract

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


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
    sha256: Sha256 | None = None
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


# -- 3. Provisioning ----------------------------------------------------------------------


class ProvisionRequest(ContractModel):
    request_id: RequestId | None = None
    partition_size: Annotated[int, Field(strict=True)]


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


# The payloads that get a JSON Schema, by file stem.
SCHEMA_MODELS: dict[str, type[ContractModel]] = {
    "config_envelope": ConfigEnvelope,
    "config_applied": ConfigApplied,
    "agent_status": AgentStatus,
    "agent_event": AgentEvent,
    "provision_request": ProvisionRequest,
    "provision_ok": ProvisionOk,
    "provision_error": ProvisionError,
    "station_status": StationStatus,
    "flash_request": FlashRequest,
    "flash_cancel": FlashCancel,
    "flash_event": FlashEvent,
}

ErrorCodes = ConfigErrorCode | ProvisionErrorCode | FlashErrorCode
