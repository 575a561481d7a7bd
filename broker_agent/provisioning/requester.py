"""A flash job's NVS image, requested from the agent over MQTT v5 (contract section 3).

The station has one MQTT client for all its jobs and routes every incoming message itself, so
the requester does not read ``client.messages``: the station's router hands it the answers
(``on_response``), and each request waits on a future registered under its Correlation Data.

Per connection the requester subscribes once to ``{root}/provision/+/response/{station_id}/+``;
each request asks for its answer on ``{root}/provision/{device_id}/response/{station_id}/{nonce}``
(below the device's response topic, as the contract allows, and scoped to the station so that
a broker ACL can let only this station read it). Failures become the flash job's errors:
no answer in time -> ``provisioning_timeout``; the agent's error -> ``provisioning_failed``
with the agent's error nested as ``cause``.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import aiomqtt

from broker_agent.provisioning.messages import ProvisionedImage, parse_response
from broker_agent.mqtt.client import PendingAnswers, request_properties
from broker_agent.errors import FlashJobError, ProvisionFailure
from broker_agent.logs import get_logger
from firmware_contracts.codes import FlashErrorCode, FlashPhase
from firmware_contracts.identifiers import check_identifier
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

log = get_logger(__name__)

_PUBLISH_RETRY_S = 0.1


class ImageRequester:
    """Image requests over a client whose messages the caller routes to ``on_response``."""

    def __init__(self, topics: Topics, station_id: str, timeout_s: float) -> None:
        self.topics = topics
        self.station_id = check_identifier(station_id, "station_id")
        self.timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._answers = PendingAnswers()

    @property
    def response_filter(self) -> str:
        """Every answer addressed to this station, whatever the device."""
        return f"{self.topics.filter(TopicKind.PROVISION_RESPONSE)}/{self.station_id}/+"

    async def attach(self, client: aiomqtt.Client) -> None:
        """Subscribe on a new connection; requests may use it from now on."""
        await client.subscribe(self.response_filter, qos=1)
        self._client = client
        self._ready.set()

    def detach(self) -> None:
        """The connection is gone; requests in flight wait for the next one (or time out)."""
        self._client = None
        self._ready.clear()

    def on_response(self, match: TopicMatch, message: aiomqtt.Message) -> None:
        """Hand an answer to the request waiting for it; anything else is logged and dropped."""
        if not self._answers.deliver(message):
            log.info("provision_answer_unexpected", topic=message.topic.value[:200])

    async def fetch(self, device_id: str, request_id: str, partition_size: int) -> bytes:
        """The device's NVS image for a partition of ``partition_size`` bytes, checked.

        Raises ``FlashJobError`` (phase ``fetching_nvs``): ``provisioning_timeout`` or
        ``provisioning_failed``.
        """
        image = await self.request(device_id, request_id, partition_size)
        return image.data

    async def request(
        self, device_id: str, request_id: str, partition_size: int
    ) -> ProvisionedImage:
        nonce = secrets.token_hex(8)
        topic = f"{self.topics.provision_response(device_id)}/{self.station_id}/{nonce}"
        payload = json.dumps(
            {"request_id": request_id, "partition_size": partition_size}, separators=(",", ":")
        ).encode("utf-8")
        with self._answers.expect(topic) as (correlation, waiting):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._publish(device_id, payload, topic, correlation)
                    answer = await waiting
            except TimeoutError:
                raise FlashJobError(
                    FlashErrorCode.PROVISIONING_TIMEOUT,
                    f"no NVS image for {device_id} from an agent within {self.timeout_s:g} s "
                    "(is `broker-agent run` connected to this broker?)",
                    FlashPhase.FETCHING_NVS,
                ) from None
        try:
            return parse_response(answer, device_id=device_id, partition_size=partition_size)
        except ProvisionFailure as exc:
            raise FlashJobError(
                FlashErrorCode.PROVISIONING_FAILED,
                f"the agent did not provide an NVS image for {device_id} ({exc.code.value})",
                FlashPhase.FETCHING_NVS,
                cause={"code": exc.code.value, "message": exc.message},
            ) from None

    async def _publish(
        self, device_id: str, payload: bytes, response_topic: str, correlation: bytes
    ) -> None:
        """Publish the request once a connection is up; retry on the next one if it drops."""
        spec = TOPICS[TopicKind.PROVISION_REQUEST]
        while True:
            await self._ready.wait()
            client = self._client
            if client is None:
                await asyncio.sleep(_PUBLISH_RETRY_S)
                continue
            try:
                await client.publish(
                    self.topics.provision_request(device_id),
                    payload,
                    qos=spec.qos,
                    retain=spec.retained,
                    properties=request_properties(response_topic, correlation),
                )
                return
            except aiomqtt.MqttError as exc:
                log.warning("provision_request_unsent", device_id=device_id, error=str(exc))
                await asyncio.sleep(_PUBLISH_RETRY_S)
