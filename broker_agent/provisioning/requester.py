"""The requester's side of provisioning (contract section 3): one image requester for all.

The flash station, ``broker-agent flash`` and ``broker-agent provision`` ask for an image the
same way. The requester never reads the connection's messages itself: whoever owns the
connection routes answers to ``on_response``, and each request waits on a future registered
under its Correlation Data.

Per connection the requester subscribes once to ``{root}/provision/+/response/{scope}/+``; each
request asks for its answer on ``{root}/provision/{device_id}/response/{scope}/{nonce}`` (below
the device's response topic, as the contract allows). ``scope`` is the station id or the MQTT
user name, so that under the production broker profile an ACL can let only this client read
its answers (``read .../response/<user>/#``).

A request published while the connection is down waits for the next one (or times out).
Failures raise ``ProvisionFailure`` with the agent's code (``internal_error`` for an answer that
fails its checks) or ``ProvisionTimeout``.
"""

from __future__ import annotations

import asyncio
import json
import secrets

from broker_agent.errors import BrokerUnavailableError, ProvisionFailure, ProvisionTimeout
from broker_agent.logs import get_logger
from broker_agent.mqtt import Connection, Message, PendingAnswers
from broker_agent.provisioning.messages import ProvisionedImage, parse_response
from firmware_contracts.identifiers import check_identifier
from firmware_contracts.topics import TOPICS, TopicKind, TopicMatch, Topics

log = get_logger(__name__)

_PUBLISH_RETRY_S = 0.1


class ImageRequester:
    """Image requests over a connection whose messages the caller routes to ``on_response``."""

    def __init__(self, topics: Topics, scope: str, timeout_s: float) -> None:
        self.topics = topics
        self.scope = check_identifier(scope, "response scope")
        self.timeout_s = timeout_s
        self._connection: Connection | None = None
        self._ready = asyncio.Event()
        self._answers = PendingAnswers()

    @property
    def response_filter(self) -> str:
        """Every answer addressed to this requester, whatever the device."""
        return f"{self.topics.filter(TopicKind.PROVISION_RESPONSE)}/{self.scope}/+"

    async def attach(self, connection: Connection) -> None:
        """Subscribe on a new connection; requests may use it from now on."""
        await connection.subscribe(self.response_filter, qos=1)
        self._connection = connection
        self._ready.set()

    def detach(self) -> None:
        """The connection is gone; requests in flight wait for the next one (or time out)."""
        self._connection = None
        self._ready.clear()

    def on_response(self, match: TopicMatch, message: Message) -> None:
        """Hand an answer to the request waiting for it; anything else is logged and dropped."""
        if not self._answers.deliver(message):
            log.info("provision_answer_unexpected", topic=message.topic[:200])

    async def request(
        self,
        device_id: str,
        partition_size: int,
        request_id: str | None = None,
        *,
        encrypted: bool = False,
    ) -> ProvisionedImage:
        """The device's NVS image for a partition of ``partition_size`` bytes, checked.

        Raises ``ProvisionFailure`` (the agent's code, or ``internal_error`` for an answer that
        fails its checks) or ``ProvisionTimeout``.
        """
        check_identifier(device_id, "device_id")
        nonce = secrets.token_hex(8)
        topic = f"{self.topics.provision_response(device_id)}/{self.scope}/{nonce}"
        document: dict[str, object] = {
            "request_id": request_id or f"req-{nonce}",
            "partition_size": int(partition_size),
        }
        if encrypted:  # an encrypted image, answered with its nvs_keys partition image
            document["encrypted"] = True
        payload = json.dumps(document, separators=(",", ":")).encode("utf-8")
        with self._answers.expect(topic) as (correlation, waiting):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._publish(device_id, payload, topic, correlation)
                    answer = await waiting
            except TimeoutError:
                raise ProvisionTimeout(
                    f"no answer from an agent within {self.timeout_s:g} s for {device_id}'s image "
                    "(is `broker-agent run` connected to this broker?)"
                ) from None
        return parse_response(answer, device_id=device_id, partition_size=partition_size)

    async def _publish(
        self, device_id: str, payload: bytes, response_topic: str, correlation: bytes
    ) -> None:
        """Publish the request once a connection is up; retry on the next one if it drops."""
        spec = TOPICS[TopicKind.PROVISION_REQUEST]
        while True:
            await self._ready.wait()
            connection = self._connection
            if connection is None:
                await asyncio.sleep(_PUBLISH_RETRY_S)
                continue
            try:
                await connection.publish(
                    self.topics.provision_request(device_id),
                    payload,
                    qos=spec.qos,
                    retain=spec.retained,
                    response_topic=response_topic,
                    correlation_data=correlation,
                )
                return
            except BrokerUnavailableError as exc:
                log.warning("provision_request_unsent", device_id=device_id, error=str(exc))
                await asyncio.sleep(_PUBLISH_RETRY_S)


__all__ = ["ImageRequester", "ProvisionFailure", "ProvisionTimeout"]
