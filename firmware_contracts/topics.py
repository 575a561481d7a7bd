"""Every MQTT topic of the contract: one table of templates, builders and a parser.

The table ``TOPICS`` is the single definition; the builders below and the generated C header
both read it. A template's placeholders are ``{root}`` and identifiers (``{device_id}``,
``{agent_id}``, ``{station_id}``); identifiers are validated before they reach a topic, so a
wildcard or a separator can never be smuggled into one.

Response topics (``TopicSpec.below_allowed``) may also be answered below their template: an
MQTT v5 requester can ask for ``.../response/<anything>`` and ``Topics.parse`` reports the
rest as ``TopicMatch.suffix``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from firmware_contracts.identifiers import check_identifier, is_identifier

DEFAULT_ROOT = "iot"
TOPIC_ROOT_MAX_LENGTH = 64  # the generated C header sizes its topic buffers for this
PROVISION_RESPONSE_EXPIRY_S = 60  # MQTT v5 Message Expiry of every provisioning response
_ROOT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TopicKind(StrEnum):
    DEVICE_CONFIG = "device_config"
    DEVICE_CONFIG_APPLIED = "device_config_applied"
    DEVICE_STATUS = "device_status"
    CONFIG_SET = "config_set"
    CONFIG_SET_RESPONSE = "config_set_response"
    AGENT_STATUS = "agent_status"
    AGENT_EVENTS = "agent_events"
    AGENT_SYNC = "agent_sync"
    AGENT_FLEET = "agent_fleet"
    PROVISION_REQUEST = "provision_request"
    PROVISION_RESPONSE = "provision_response"
    STATION_STATUS = "station_status"
    FLASH_REQUEST = "flash_request"
    FLASH_CANCEL = "flash_cancel"
    FLASH_RESPONSE = "flash_response"


@dataclass(frozen=True)
class TopicSpec:
    kind: TopicKind
    template: str  # relative to the root, e.g. "devices/{device_id}/config"
    retained: bool
    qos: int
    publisher: str
    description: str
    below_allowed: bool = False  # a v5 requester may name a Response Topic below this one

    @property
    def id_name(self) -> str:
        return self.template.split("{", 1)[1].split("}", 1)[0]

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.template.split("/"))


TOPICS: dict[TopicKind, TopicSpec] = {
    spec.kind: spec
    for spec in (
        TopicSpec(
            TopicKind.DEVICE_CONFIG,
            "devices/{device_id}/config",
            True,
            1,
            "agent",
            "A device's current config envelope; empty retained payload when deleted.",
        ),
        TopicSpec(
            TopicKind.DEVICE_CONFIG_APPLIED,
            "devices/{device_id}/config/applied",
            True,
            1,
            "device",
            "The firmware's ack of every config it receives (retained since v1.1).",
        ),
        TopicSpec(
            TopicKind.DEVICE_STATUS,
            "devices/{device_id}/status",
            True,
            1,
            "device",
            "Device presence; the MQTT will sets it offline (v1.1).",
        ),
        TopicSpec(
            TopicKind.CONFIG_SET,
            "devices/{device_id}/config/set",
            False,
            1,
            "operator",
            "Request: replace, merge or delete a device's config file (v1.1).",
        ),
        TopicSpec(
            TopicKind.CONFIG_SET_RESPONSE,
            "devices/{device_id}/config/set/response",
            False,
            1,
            "agent",
            "Default config/set response topic; v5 requesters may use a topic below it.",
            below_allowed=True,
        ),
        TopicSpec(
            TopicKind.AGENT_STATUS,
            "agents/{agent_id}/status",
            True,
            1,
            "agent",
            "Agent presence; the MQTT will sets it offline.",
        ),
        TopicSpec(
            TopicKind.AGENT_EVENTS,
            "agents/{agent_id}/events",
            False,
            0,
            "agent",
            "One message per notable agent event (informational: QoS 0).",
        ),
        TopicSpec(
            TopicKind.AGENT_SYNC,
            "agents/{agent_id}/sync",
            False,
            0,
            "agent",
            "The agent's own marker: once it arrives, every retained config was seen.",
        ),
        TopicSpec(
            TopicKind.AGENT_FLEET,
            "agents/{agent_id}/fleet",
            True,
            1,
            "agent",
            "Fleet state summary, at most once a second while it changes (v1.1).",
        ),
        TopicSpec(
            TopicKind.PROVISION_REQUEST,
            "provision/{device_id}/request",
            False,
            1,
            "station",
            "Request for a device's NVS partition image.",
        ),
        TopicSpec(
            TopicKind.PROVISION_RESPONSE,
            "provision/{device_id}/response",
            False,
            1,
            "agent",
            "Default response topic; v5 requesters may use a topic below it.",
            below_allowed=True,
        ),
        TopicSpec(
            TopicKind.STATION_STATUS,
            "stations/{station_id}/status",
            True,
            1,
            "station",
            "Station presence and attached ports; the MQTT will sets it offline.",
        ),
        TopicSpec(
            TopicKind.FLASH_REQUEST,
            "stations/{station_id}/flash/request",
            False,
            1,
            "operator",
            "Command: provision one attached board.",
        ),
        TopicSpec(
            TopicKind.FLASH_CANCEL,
            "stations/{station_id}/flash/cancel",
            False,
            1,
            "operator",
            "Cancel a running flash job.",
        ),
        TopicSpec(
            TopicKind.FLASH_RESPONSE,
            "stations/{station_id}/flash/response",
            False,
            1,
            "station",
            "Default topic of a flash job's event stream.",
        ),
    )
}


def check_root(root: str) -> str:
    """A topic root is one or more plain segments separated by ``/``."""
    if len(root) > TOPIC_ROOT_MAX_LENGTH:
        raise ValueError(f"topic root is longer than {TOPIC_ROOT_MAX_LENGTH} characters")
    if not all(_ROOT_SEGMENT.fullmatch(part) for part in root.split("/")):
        raise ValueError(
            f"topic root {root!r} must be '/'-separated segments of A-Z, a-z, 0-9, '_', '-'"
        )
    return root


@dataclass(frozen=True)
class TopicMatch:
    kind: TopicKind
    identifier: str
    suffix: str = ""  # what follows a response topic (below_allowed), e.g. "station-1/job-7"


@dataclass(frozen=True)
class Topics:
    """Topic builders for one root. ``Topics("iot").device_config("kitchen-01")``."""

    root: str = DEFAULT_ROOT
    _root_parts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_root(self.root)
        object.__setattr__(self, "_root_parts", tuple(self.root.split("/")))

    def build(self, kind: TopicKind, identifier: str) -> str:
        spec = TOPICS[kind]
        check_identifier(identifier, spec.id_name)
        return f"{self.root}/" + spec.template.replace("{" + spec.id_name + "}", identifier)

    def filter(self, kind: TopicKind) -> str:
        """The subscription filter for ``kind`` across all identifiers (``+`` for the id)."""
        spec = TOPICS[kind]
        return f"{self.root}/" + spec.template.replace("{" + spec.id_name + "}", "+")

    def device_config(self, device_id: str) -> str:
        return self.build(TopicKind.DEVICE_CONFIG, device_id)

    def device_config_applied(self, device_id: str) -> str:
        return self.build(TopicKind.DEVICE_CONFIG_APPLIED, device_id)

    def device_status(self, device_id: str) -> str:
        return self.build(TopicKind.DEVICE_STATUS, device_id)

    def config_set(self, device_id: str) -> str:
        return self.build(TopicKind.CONFIG_SET, device_id)

    def config_set_response(self, device_id: str) -> str:
        return self.build(TopicKind.CONFIG_SET_RESPONSE, device_id)

    def agent_status(self, agent_id: str) -> str:
        return self.build(TopicKind.AGENT_STATUS, agent_id)

    def agent_events(self, agent_id: str) -> str:
        return self.build(TopicKind.AGENT_EVENTS, agent_id)

    def agent_sync(self, agent_id: str) -> str:
        return self.build(TopicKind.AGENT_SYNC, agent_id)

    def agent_fleet(self, agent_id: str) -> str:
        return self.build(TopicKind.AGENT_FLEET, agent_id)

    def provision_request(self, device_id: str) -> str:
        return self.build(TopicKind.PROVISION_REQUEST, device_id)

    def provision_response(self, device_id: str) -> str:
        return self.build(TopicKind.PROVISION_RESPONSE, device_id)

    def station_status(self, station_id: str) -> str:
        return self.build(TopicKind.STATION_STATUS, station_id)

    def flash_request(self, station_id: str) -> str:
        return self.build(TopicKind.FLASH_REQUEST, station_id)

    def flash_cancel(self, station_id: str) -> str:
        return self.build(TopicKind.FLASH_CANCEL, station_id)

    def flash_response(self, station_id: str) -> str:
        return self.build(TopicKind.FLASH_RESPONSE, station_id)

    def parse(self, topic: str) -> TopicMatch | None:
        """Recognise a contract topic; ``None`` for anything else (or an invalid identifier).

        A response topic (provisioning, config/set) may carry a suffix
        (``.../response/<anything>``).
        """
        parts = topic.split("/")
        n_root = len(self._root_parts)
        if tuple(parts[:n_root]) != self._root_parts:
            return None
        rest = parts[n_root:]
        for spec in TOPICS.values():
            segments = spec.segments
            exact = len(rest) == len(segments)
            below = spec.below_allowed and len(rest) > len(segments)
            if not (exact or below):
                continue
            identifier = ""
            for want, got in zip(segments, rest, strict=False):
                if want.startswith("{"):
                    identifier = got
                elif want != got:
                    break
            else:
                if not is_identifier(identifier):
                    return None
                suffix = "/".join(rest[len(segments) :])
                if below and not suffix:
                    continue
                return TopicMatch(spec.kind, identifier, suffix)
        return None

    def is_reply_topic_for(self, kind: TopicKind, identifier: str, topic: str) -> bool:
        """True when ``topic`` is ``kind``'s topic for ``identifier`` or, for a response topic
        (``below_allowed``), a topic below it: what an MQTT v5 Response Topic may name."""
        base = self.build(kind, identifier)
        if topic == base:
            return True
        if not TOPICS[kind].below_allowed:
            return False
        if not topic.startswith(base + "/") or len(topic) == len(base) + 1:
            return False
        return not any(ch in topic for ch in "+#\x00")

    def is_response_topic_for(self, device_id: str, topic: str) -> bool:
        """True when ``topic`` is the device's provisioning response topic or below it."""
        return self.is_reply_topic_for(TopicKind.PROVISION_RESPONSE, device_id, topic)

    def is_config_set_response_topic_for(self, device_id: str, topic: str) -> bool:
        """True when ``topic`` is the device's config/set response topic or below it."""
        return self.is_reply_topic_for(TopicKind.CONFIG_SET_RESPONSE, device_id, topic)
