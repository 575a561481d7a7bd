"""``broker-agent provision DEVICE_ID --partition-size SIZE -o FILE [--offline]``.

Asks an agent over MQTT v5 (``ImageRequester``, answers scoped to the MQTT user name when it is
an identifier, as the production ACL wants) or, with ``--offline``, builds the same image from
the secrets directory, then writes it atomically with mode 0600 (it holds credentials).
Exit status: 0 written; 1 the agent refused or did not answer (``error: <code>: <message>``);
2 setup errors.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from broker_agent.errors import (
    BrokerUnavailableError,
    ProvisionFailure,
    ProvisionTimeout,
    SetupError,
)
from broker_agent.files import write_atomically
from broker_agent.mqtt import BrokerUrls, Router, make_connection
from broker_agent.provisioning.messages import ProvisionedImage
from broker_agent.provisioning.offline import build_offline_image
from broker_agent.provisioning.requester import ImageRequester
from broker_agent.settings import AgentSettings, MqttSettings
from firmware_contracts.codes import FlashErrorCode
from firmware_contracts.identifiers import InvalidIdentifierError, check_identifier, is_identifier
from firmware_contracts.topics import TopicKind, Topics

TIMEOUT_CODE = FlashErrorCode.PROVISIONING_TIMEOUT.value
"""What ``provision`` prints for a timeout (the flash station's code for the same thing)."""


def provision_command(args: argparse.Namespace, settings: AgentSettings) -> int:
    """``broker-agent provision DEVICE_ID --partition-size SIZE -o FILE [--offline]``."""
    try:
        device_id = check_identifier(args.device_id, "device_id")
    except InvalidIdentifierError as exc:
        raise SetupError(str(exc)) from None
    output = Path(args.output)
    try:
        if args.offline:
            image = build_offline_image(settings, device_id, args.partition_size)
        else:
            if settings.broker_url is None:
                raise SetupError(
                    "provision needs a broker: pass --broker-url or set BROKER_AGENT_BROKER_URL "
                    "(or use --offline to build the image from the secrets directory)"
                )
            image = asyncio.run(
                request_image_online(
                    settings,
                    settings.broker_url,
                    device_id,
                    args.partition_size,
                    settings.provision_timeout_s,
                )
            )
    except ProvisionTimeout as exc:
        print(f"error: {TIMEOUT_CODE}: {exc.message}", file=sys.stderr)
        return 1
    except ProvisionFailure as exc:
        print(f"error: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 1
    except BrokerUnavailableError as exc:
        print(f"error: broker_unavailable: {exc}", file=sys.stderr)
        return 1
    try:
        write_atomically(output, image.data, 0o600)  # the image holds credentials
    except OSError as exc:
        print(f"error: write_failed: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {output}: {image.partition_size} bytes, namespace {image.namespace}")
    print(f"keys: {', '.join(image.keys)}")
    print(f"md5: {image.md5}")
    return 0


def request_scope(settings: MqttSettings, url: str, fallback: str) -> str:
    """Answers go below the MQTT user name when it is an identifier (the production ACL lets
    a station read only ``.../response/<its user name>/#``), else below ``fallback``."""
    username = BrokerUrls.parse(url).username or settings.mqtt_username
    return username if username is not None and is_identifier(username) else fallback


async def request_image_online(
    settings: MqttSettings, url: str, device_id: str, partition_size: int, timeout: float
) -> ProvisionedImage:
    """Connect, ask an agent for the device's image, return it checked (see ImageRequester)."""
    topics = Topics(settings.topic_root)
    nonce = secrets.token_hex(6)
    requester = ImageRequester(topics, request_scope(settings, url, f"cli-{nonce}"), timeout)
    router = Router(topics, {TopicKind.PROVISION_RESPONSE: requester.on_response})
    connection = make_connection(
        settings, url, client_id=f"provision-{nonce}", timeout=timeout, route=router
    )
    async with connection:
        await requester.attach(connection)
        lost = asyncio.create_task(connection.wait_disconnected(), name="provision-connection")
        asking = asyncio.create_task(
            requester.request(device_id, partition_size), name="provision-request"
        )
        try:
            await asyncio.wait({asking, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not asking.done():
                lost.result()  # raises why the connection ended
            return asking.result()
        finally:
            # both ended before the connection closes (``asking`` used to be left cancelled
            # but never awaited when the connection dropped first)
            asking.cancel()
            lost.cancel()
            await asyncio.wait({asking, lost})
