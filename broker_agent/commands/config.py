"""``broker-agent config set|merge|delete|get DEVICE``: config writes over MQTT (contract 6.3).

``set`` and ``merge`` read a JSON object from a file argument or stdin (``-`` or no argument)
and send it as ``config`` (replace) or ``merge`` (an RFC 7396 merge patch); ``delete`` deletes.
``--if-sha256 SHA`` writes only if the current config has that sha256; ``--if-sha256 null``
only if the device has no config yet. The request goes out as MQTT v5 with a Response Topic
below the device's ``config/set/response`` (scoped to the MQTT user name, as for
``provision``) and fresh Correlation Data; the agent answers once the retained config is
published. ``get`` prints the retained config (the ``config`` object of the envelope).

Exit status: 0 ok; 1 the agent refused (``error: <code>: <message>``, a schema violation with
its JSON path), no agent answered, or ``get`` found no config; 2 setup errors (bad device id,
unreadable input, broker unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
from typing import Any

from broker_agent.commands.provision import request_scope
from broker_agent.commands.status import marker_topic
from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.mqtt import Message, PendingAnswers, make_connection
from broker_agent.mqtt.retained import read_retained
from broker_agent.settings import MqttSettings
from firmware_contracts.identifiers import InvalidIdentifierError, check_identifier
from firmware_contracts.json_rules import StrictJsonError, loads_strict
from firmware_contracts.payloads import SHA256_PATTERN, ConfigEnvelope
from firmware_contracts.topics import Topics

EXIT_REFUSED = 1
EXIT_SETUP = 2


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``config/set`` payload for ``set``/``merge``/``delete``; Refused or SetupError."""
    request: dict[str, Any] = {"request_id": f"cli-{secrets.token_hex(6)}"}
    if args.action == "delete":
        request["delete"] = True
    else:
        raw = _read_input(args.file)
        try:
            document = loads_strict(raw)
        except StrictJsonError as exc:
            raise Refused("invalid_json", exc.message) from None
        if not isinstance(document, dict):
            raise Refused("not_an_object", "the input must be a JSON object")
        request["config" if args.action == "set" else "merge"] = document
    if args.if_sha256 is not None:
        if args.if_sha256 == "null":
            request["if_sha256"] = None
        elif re.fullmatch(SHA256_PATTERN, args.if_sha256):
            request["if_sha256"] = args.if_sha256
        else:
            raise SetupError("--if-sha256 takes a sha256 (64 lower-case hex digits) or null")
    return request


def _read_input(name: str | None) -> bytes:
    if name is None or name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as handle:  # noqa: PTH123 - a path or - from the command line
            return handle.read()
    except OSError as exc:
        raise SetupError(f"cannot read {name}: {exc.strerror}") from None


async def send_write(
    settings: MqttSettings, url: str, device_id: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send one write and return the agent's answer (a ``ConfigSetOk`` or ``ConfigSetError``)."""
    topics = Topics(settings.topic_root)
    nonce = secrets.token_hex(6)
    scope = request_scope(settings, url, f"cli-{nonce}")
    base = topics.config_set_response(device_id)
    pending = PendingAnswers()

    def route(message: Message) -> None:
        pending.deliver(message)

    connection = make_connection(settings, url, client_id=f"config-{nonce}", route=route)
    async with connection:
        lost = asyncio.create_task(connection.wait_disconnected(), name="config-connection")
        try:
            await connection.subscribe(f"{base}/{scope}/#", qos=1)
            with pending.expect(f"{base}/{scope}/{nonce}") as (correlation, answer):
                await connection.publish(
                    topics.config_set(device_id),
                    json.dumps(request).encode(),
                    qos=1,
                    response_topic=f"{base}/{scope}/{nonce}",
                    correlation_data=correlation,
                )
                waiting: set[asyncio.Future[Any]] = {answer, lost}
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when="FIRST_COMPLETED"
                )
                if lost in done:
                    lost.result()
                if answer not in done:
                    raise Refused("timeout", f"no agent answered within {timeout:g} s")
                result: dict[str, Any] = json.loads(answer.result())
                return result
        finally:
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)


async def get_config(
    settings: MqttSettings, url: str, device_id: str, timeout: float
) -> ConfigEnvelope | None:
    topic = Topics(settings.topic_root).device_config(device_id)
    found: dict[str, bytes] = {}
    await read_retained(
        settings,
        url,
        [topic],
        found.__setitem__,
        client_id=f"config-{secrets.token_hex(6)}",
        marker_topic=marker_topic(settings, url),
        timeout=timeout,
    )
    payload = found.get(topic, b"")
    return ConfigEnvelope.from_json(payload) if payload else None


def config_command(args: argparse.Namespace, settings: MqttSettings) -> int:
    try:
        device_id = check_identifier(args.device_id, "device_id")
    except InvalidIdentifierError as exc:
        raise SetupError(str(exc)) from None
    url = settings.broker_url
    if url is None:
        raise SetupError("config needs a broker: pass --broker-url or set BROKER_AGENT_BROKER_URL")
    try:
        if args.action == "get":
            envelope = asyncio.run(get_config(settings, url, device_id, args.timeout))
            if envelope is None:
                raise Refused("unknown_device", f"the broker retains no config for {device_id}")
            print(json.dumps(envelope.config, indent=2, ensure_ascii=False))
            print(f"sha256 {envelope.sha256}, updated {envelope.updated_at}", file=sys.stderr)
            return 0
        request = build_request(args)
        answer = asyncio.run(send_write(settings, url, device_id, request, args.timeout))
    except Refused as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokerUnavailableError as exc:
        print(f"broker-agent: error: broker_unavailable: {exc}", file=sys.stderr)
        return EXIT_SETUP
    if answer.get("status") != "ok":
        error = answer.get("error") or {}
        print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return EXIT_REFUSED
    sha = answer.get("sha256")
    print(f"ok: {device_id} deleted" if sha is None else f"ok: {device_id} sha256 {sha}")
    return 0
