"""The console's REST API (issue 12), documented by OpenAPI at ``/api/docs``.

Reads come from the console's in-memory model; every write is a contract publish through
``ConsoleClient`` (``config/set``, provisioning requests, flash requests and cancels), so the
API can do nothing the operator account could not do with ``mosquitto_pub``.

Errors are ``{"error": {"code", "message"}}``; a config write refused by the agent keeps the
agent's code (contract 6.3) and maps it to a status: ``conflict`` 409 (``If-Match`` was not
the current sha256; the message names the current one), ``schema_violation`` 422 with
``violations: [{"path", "message"}]``, ``unknown_device`` 404, ``writes_disabled`` 403,
``too_large`` 413, the other request errors 400. No agent answering in time is 504; the
console not connected to the broker is 503.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from broker_agent.errors import ProvisionFailure, ProvisionTimeout
from broker_agent.http.console.client import NotConnectedError
from broker_agent.http.console.session import Console, ConsoleError, actor, viewer
from firmware_contracts.json_rules import StrictJsonError, loads_strict

router = APIRouter(prefix="/api", tags=["console"])

DeviceId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
StationId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]

_WRITE_STATUS = {
    "conflict": 409,
    "schema_violation": 422,
    "not_an_object": 422,
    "unknown_device": 404,
    "writes_disabled": 403,
    "too_large": 413,
    "invalid_json": 400,
    "invalid_request": 400,
}
_PROVISION_STATUS = {
    "unknown_device": 404,
    "invalid_partition_size": 422,
    "credentials_unavailable": 409,
    "invalid_credentials": 409,
}
_VIOLATION = re.compile(r"(?:^|; )(\$[^:;]*): ")


def violations(message: str) -> list[dict[str, str]]:
    """``"$.a: x; $.b[0]: y"`` (the agent's schema_violation message) -> path and message each."""
    starts = list(_VIOLATION.finditer(message))
    found = []
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(message)
        found.append({"path": match.group(1), "message": message[match.end() : end]})
    return found


class DevicePage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int
    counts: dict[str, int]


class FlashJobRequest(BaseModel):
    device_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    port: str | None = Field(default=None, max_length=256)
    expected_mac: str | None = Field(default=None, max_length=32)


class Provisioning(BaseModel):
    """The NVS image, in the shape the system this project replaces answered."""

    size: int
    data: str = Field(description="base64 of the image (it holds the device's credentials)")


@router.get("/devices", response_model=DevicePage)
async def list_devices(
    request: Request,
    state: Annotated[str | None, Query(description="a fleet state, e.g. pending")] = None,
    presence: Annotated[str | None, Query(description="online, offline or unknown")] = None,
    q: Annotated[str | None, Query(max_length=64, description="part of the device id")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DevicePage:
    """Devices by id, filtered and paged on the server, with the fleet's counts per state."""
    console = viewer(request)
    model = console.client.model
    items, total = model.devices(
        state=state, presence=presence, search=q, offset=(page - 1) * per_page, limit=per_page
    )
    return DevicePage(items=items, total=total, page=page, per_page=per_page, counts=model.counts())


@router.get("/devices/{device_id}")
async def get_device(request: Request, device_id: DeviceId) -> JSONResponse:
    """The retained config, its sha256 and age, the last ack and error, presence."""
    found = viewer(request).client.model.device(device_id)
    if found is None:
        raise ConsoleError(404, "unknown_device", f"the broker retains nothing for {device_id}")
    headers = {"ETag": f'"{found["sha256"]}"'} if found["sha256"] else {}
    return JSONResponse(found, headers=headers)


_CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_MERGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}
IfMatch = Annotated[
    str | None, Header(description="the sha256 the change is based on (409 if it moved on)")
]
IfNoneMatch = Annotated[str | None, Header(description="`*`: only if the device has no config")]


@router.put("/devices/{device_id}/config", openapi_extra=_CONFIG_BODY)
async def put_config(
    request: Request,
    device_id: DeviceId,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> JSONResponse:
    """Replace the device's config (``config/set`` with ``config``)."""
    console = actor(request)
    body = await _object_body(request)
    write = {"config": body, **_precondition(if_match, if_none_match)}
    return await _write(console, device_id, write)


@router.patch("/devices/{device_id}/config", openapi_extra=_MERGE_BODY)
async def patch_config(
    request: Request,
    device_id: DeviceId,
    if_match: IfMatch = None,
) -> JSONResponse:
    """An RFC 7396 JSON merge patch onto the current config (``config/set`` with ``merge``)."""
    console = actor(request)
    body = await _object_body(request)
    return await _write(console, device_id, {"merge": body, **_precondition(if_match, None)})


@router.delete("/devices/{device_id}/config")
async def delete_config(
    request: Request, device_id: DeviceId, if_match: IfMatch = None
) -> JSONResponse:
    """Delete the config: the agent removes the file and clears the retained message."""
    console = actor(request)
    return await _write(console, device_id, {"delete": True, **_precondition(if_match, None)})


@router.get(
    "/devices/{device_id}/provisioning",
    response_model=Provisioning,
    responses={404: {"description": "unknown device"}, 504: {"description": "no agent"}},
)
async def provisioning(
    request: Request,
    device_id: DeviceId,
    partition_size: Annotated[int, Query(ge=0x3000, le=0x100000)],
) -> JSONResponse:
    """The device's NVS partition image for a partition of ``partition_size`` bytes.

    Asked from an agent over MQTT like any requester (contract section 3). The image holds the
    device's credentials: the answer is never cached, and this is the one API answer that
    carries them (base64, in the image); it is not logged.
    """
    console = viewer(request)
    try:
        image = await console.client.provision(device_id, partition_size)
    except ProvisionTimeout as exc:
        raise ConsoleError(504, "timeout", exc.message) from None
    except ProvisionFailure as exc:
        status = _PROVISION_STATUS.get(exc.code.value, 502)
        raise ConsoleError(status, exc.code.value, exc.message) from None
    body = {"size": image.partition_size, "data": base64.b64encode(image.data).decode("ascii")}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/stations")
async def list_stations(request: Request) -> dict[str, Any]:
    """Every station seen: online/offline, its ports busy or free, its recent jobs."""
    return {"stations": viewer(request).client.model.station_list()}


@router.post("/stations/{station_id}/jobs", status_code=202)
async def start_job(
    request: Request, station_id: StationId, job: Annotated[FlashJobRequest, Body()]
) -> dict[str, Any]:
    """Ask the station to flash a device's NVS image on a port; follow it on /api/events."""
    console = actor(request)
    request_id = await console.client.start_job(
        station_id, job.device_id, job.port, job.expected_mac
    )
    return console.client.model.job(request_id)


@router.get("/jobs/{request_id}")
async def get_job(request: Request, request_id: str) -> dict[str, Any]:
    model = viewer(request).client.model
    if request_id not in model.jobs:
        raise ConsoleError(404, "unknown_job", "no such job seen by this console")
    return model.job(request_id)


@router.delete("/stations/{station_id}/jobs/{request_id}", status_code=202)
async def cancel_job(request: Request, station_id: StationId, request_id: str) -> dict[str, str]:
    """Cancel a running job (``flash/cancel``); it ends with ``aborted``."""
    console = actor(request)
    await console.client.cancel_job(station_id, request_id)
    return {"request_id": request_id, "status": "cancel_requested"}


@router.get("/events/recent")
async def recent_events(
    request: Request,
    event: Annotated[str | None, Query(description="an event name, e.g. config_rejected")] = None,
    q: Annotated[str | None, Query(max_length=64, description="part of the device id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """The agents' recent events, newest first."""
    model = viewer(request).client.model
    return {"events": model.recent_events(event=event, search=q, limit=limit)}


@router.get("/events", response_class=EventSourceResponse)
async def events(console: Annotated[Console, Depends(viewer)]) -> AsyncIterator[ServerSentEvent]:
    """Live updates (server-sent events): ``update`` batches at most 5 per second, each with
    the changed device ids, stations, jobs, new agent events and the fleet's counts.

    The login check is a dependency: it must run before the stream starts, or its 401 would
    come out as a broken stream."""
    changes = console.client.model.changes
    queue = changes.subscribe()
    try:
        yield ServerSentEvent(event="hello", data={"counts": console.client.model.counts()})
        async for batch in console.batches(queue):
            yield ServerSentEvent(event="update", data=batch)
    finally:
        changes.unsubscribe(queue)


# -- helpers ---------------------------------------------------------------------------------


async def _object_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        document = loads_strict(raw)
    except (StrictJsonError, ValueError) as exc:
        raise ConsoleError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConsoleError(422, "not_an_object", "the config must be a JSON object")
    return document


def _precondition(if_match: str | None, if_none_match: str | None) -> dict[str, Any]:
    if if_none_match is not None and if_none_match.strip() == "*":
        return {"if_sha256": None}
    if if_match is None:
        return {}
    sha = if_match.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConsoleError(400, "invalid_request", "If-Match must be a config's sha256")
    return {"if_sha256": sha}


async def _write(console: Console, device_id: str, write: dict[str, Any]) -> JSONResponse:
    try:
        answer = await console.client.write_config(device_id, write)
    except TimeoutError:
        raise ConsoleError(
            504,
            "timeout",
            f"no agent answered within {console.client.settings.console_request_timeout_s:g} s "
            "(is `broker-agent run` connected to this broker, and may the console's MQTT "
            "account write config/set?)",
        ) from None
    except NotConnectedError as exc:
        raise ConsoleError(503, "not_connected", str(exc)) from None
    if answer.get("status") == "ok":
        sha = answer.get("sha256")
        headers = {"ETag": f'"{sha}"'} if sha else {}
        return JSONResponse({"device_id": device_id, "sha256": sha}, headers=headers)
    error = answer.get("error") or {}
    code, message = str(error.get("code", "internal_error")), str(error.get("message", ""))
    extra = {"violations": violations(message)} if code == "schema_violation" else {}
    raise ConsoleError(_WRITE_STATUS.get(code, 502), code, message, extra)


def no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"
