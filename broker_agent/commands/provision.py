"""The requester's side of provisioning: ``broker-agent provision`` and the flash station.

- ``request_image``: ask an agent over MQTT v5 and wait for its answer (``ProvisionRequester``
  does the same for a client whose messages are routed elsewhere, as in the flash station);
- ``build_offline_image``: build the same image from the secrets directory, no broker;
- ``provision_command``: the ``provision`` command line.

Failures raise ``ProvisionFailure`` with the agent's error code (or ``internal_error`` when an
answer fails its checks); no answer in time raises ``ProvisionTimeout``, its subclass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from pathlib import Path

import aiomqtt

from broker_agent.files import write_atomically
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.messages import ProvisionedImage, build_image, parse_response
from broker_agent.mqtt.client import (
    BrokerUrl,
    PendingAnswers,
    connected,
    make_client,
    request_properties,
)
from broker_agent.errors import ProvisionFailure, SetupError
from broker_agent.settings import AgentSettings
from firmware_contracts.codes import FlashErrorCode, ProvisionErrorCode
from firmware_contracts.identifiers import InvalidIdentifierError, check_identifier, is_identifier
from firmware_contracts.nvs import partition_size_error
from firmware_contracts.topics import Topics

__all__ = [
    "ProvisionRequester",
    "ProvisionTimeout",
    "ProvisionedImage",
    "build_offline_image",
    "provision_command",
    "request_image",
]

TIMEOUT_CODE = FlashErrorCode.PROVISIONING_TIMEOUT.value
"""What ``provision`` prints for a timeout (the flash station's code for the same thing)."""


class ProvisionTimeout(ProvisionFailure):
    """No agent answered in time. ``code`` is ``internal_error``; print ``TIMEOUT_CODE``."""

    def __init__(self, message: str) -> None:
        super().__init__(ProvisionErrorCode.INTERNAL_ERROR, message)


class ProvisionRequester:
    """Image requests over a client whose incoming messages something else routes.

    For a process that already consumes its client's messages (the flash station's router):
    hand every incoming message to ``on_message``; ``request`` then waits for its own answer.
    Answers are matched by Correlation Data (and topic), so concurrent requests are fine.
    """

    def __init__(self, client: aiomqtt.Client, topics: Topics) -> None:
        self.client = client
        self.topics = topics
        self._answers = PendingAnswers()

    def on_message(self, message: aiomqtt.Message) -> bool:
        """Take an answer this requester waits for (True), or leave the message alone (False)."""
        return self._answers.deliver(message)

    async def request(
        self,
        device_id: str,
        partition_size: int,
        *,
        timeout: float,
        response_suffix: str | None = None,
    ) -> ProvisionedImage:
        """Request a device's image from an agent and return it, decoded and checked.

        The answer comes on ``{root}/provision/{device_id}/response/<suffix>``: a random suffix by
        default; a given one (e.g. ``station-1/job-7``) must be unique among this client's
        requests in flight. Raises ``ProvisionFailure`` (the agent's code, or ``internal_error``
        for an answer that fails its checks), ``ProvisionTimeout``, or ``aiomqtt.MqttError``.
        """
        check_identifier(device_id, "device_id")
        suffix = response_suffix or f"req-{secrets.token_hex(8)}"
        response_topic = f"{self.topics.provision_response(device_id)}/{suffix}"
        if not self.topics.is_response_topic_for(device_id, response_topic):
            raise ValueError(f"response suffix {suffix!r} does not give a usable topic")
        request = b'{"request_id":"req-%s","partition_size":%d}' % (
            secrets.token_hex(8).encode(),
            int(partition_size),
        )
        with self._answers.expect(response_topic) as (correlation, answer):
            try:
                async with asyncio.timeout(timeout):
                    await self.client.subscribe(response_topic, qos=1)
                    await self.client.publish(
                        self.topics.provision_request(device_id),
                        request,
                        qos=1,
                        properties=request_properties(response_topic, correlation),
                    )
                    payload = await answer
            except TimeoutError:
                raise ProvisionTimeout(
                    f"no answer from an agent within {timeout:g} s (is `broker-agent run` "
                    "connected to this broker?)"
                ) from None
            finally:
                with contextlib.suppress(aiomqtt.MqttError):  # gone with the connection
                    await self.client.unsubscribe(response_topic, timeout=2)
        return parse_response(payload, device_id=device_id, partition_size=partition_size)


async def request_image(
    client: aiomqtt.Client,
    topics: Topics,
    device_id: str,
    partition_size: int,
    *,
    timeout: float,
    response_suffix: str | None = None,
) -> ProvisionedImage:
    """``ProvisionRequester.request`` for a client with no other reader of ``client.messages``.

    Reads ``client.messages`` itself while it waits, ignoring everything that is not its answer.
    """
    requester = ProvisionRequester(client, topics)

    async def pump() -> None:
        async for message in client.messages:
            requester.on_message(message)
        raise aiomqtt.MqttError("the connection closed while waiting for the answer")

    reader = asyncio.create_task(pump(), name="provision-answers")
    asking = asyncio.create_task(
        requester.request(
            device_id, partition_size, timeout=timeout, response_suffix=response_suffix
        ),
        name="provision-request",
    )
    try:
        await asyncio.wait({reader, asking}, return_when=asyncio.FIRST_COMPLETED)
        if not asking.done():
            reader.result()  # the connection failed: raise why
        return asking.result()
    finally:
        for task in (asking, reader):
            task.cancel()
        await asyncio.gather(asking, reader, return_exceptions=True)


def build_offline_image(
    settings: AgentSettings, device_id: str, partition_size: int
) -> ProvisionedImage:
    """The image the agent would answer with, built here from ``settings.secrets_dir``.

    Follows the agent's rules, issuing included when ``settings.issue_credentials`` is on.
    """
    problem = partition_size_error(partition_size)
    if problem is not None:
        raise ProvisionFailure(ProvisionErrorCode.INVALID_PARTITION_SIZE, problem)
    store = CredentialStore(
        settings.secrets_dir, settings.config_dir, issue=settings.issue_credentials
    )
    return build_image(device_id, store.values_for(device_id), partition_size)


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
                _request_online(
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
    except aiomqtt.MqttError as exc:
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


async def _request_online(
    settings: AgentSettings, url: str, device_id: str, partition_size: int, timeout: float
) -> ProvisionedImage:
    client = make_client(
        settings, url, client_id=f"provision-{secrets.token_hex(6)}", timeout=timeout
    )
    # Under the production broker profile a station may read only the answers addressed to
    # it (.../response/<its user name>/...): ask for the answer there when we have a user name.
    username = BrokerUrl.parse(url).username or settings.mqtt_username
    suffix = f"req-{secrets.token_hex(8)}"
    if username is not None and is_identifier(username):
        suffix = f"{username}/{suffix}"
    async with connected(client):
        return await request_image(
            client,
            Topics(settings.topic_root),
            device_id,
            partition_size,
            timeout=timeout,
            response_suffix=suffix,
        )
