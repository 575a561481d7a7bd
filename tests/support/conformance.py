"""A conformance monitor for integration tests: every message on the contract's topics is checked.

``ConformanceMonitor(host, port, root)`` runs a paho-mqtt client thread (MQTT v5) subscribed to
``{root}/#`` with QoS 0 and Retain As Published, and checks each message it sees:

- the topic: a contract topic with a valid identifier (responses may sit below
  ``.../response/<suffix>``); the agent's internal ``agents/{id}/sync`` topic is ignored, and so
  is anything under the root that is not shaped like a contract topic;
- the retain flag against the topic's definition (a zero-length retained message, which clears
  retained state, is always allowed);
- the payload: a JSON object under the contract's strict JSON rules (``loads_strict``: UTF-8,
  no NaN, no lone surrogates...) valid against the generated JSON Schema of that topic
  (provisioning and config/set responses by ``"status"``), plus the cross-checks a schema
  cannot express: the id inside the payload matches the topic (where the payload has one), a
  config's ``sha256`` is the hash of its canonical config, and a fleet summary's counts add up.

Problems are collected, never raised, in ``violations`` (``"<topic>: <reason>"``);
``records`` keeps the same with the topic's publisher role (``agent``, ``station``, ``device``,
``operator``), so a test that deliberately sends a malformed request can still demand that the
agent's and the stations' output is clean: ``monitor.violations_from("agent", "station")``.
The roles come from the topic table: a device publishes its ``status`` and ``config/applied``,
an operator ``config/set`` and flash commands, the agent ``config/set/response`` and ``fleet``.
(A zero-length retained clear is allowed on any retained topic, whoever sends it: the agent
clears a deleted device's ``config/applied``.)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from firmware_contracts import codegen
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.json_rules import StrictJsonError, loads_strict
from firmware_contracts.payloads import config_sha256
from firmware_contracts.topics import TOPICS, TopicKind, TopicSpec, check_root

# Topics that may be used below their template: the contract's response topics, and a flash
# job's events (a station honours a v5 Response Topic below its own, docs/contract.md).
RESPONSE_KINDS = frozenset(
    {kind for kind, spec in TOPICS.items() if spec.below_allowed} | {TopicKind.FLASH_RESPONSE}
)
IGNORED_KINDS = frozenset({TopicKind.AGENT_SYNC})
# The payload field that repeats the topic's id. None on config/applied, device status,
# config/set requests and the fleet summary: those payloads carry no id.
_ID_FIELDS = {
    TopicKind.DEVICE_CONFIG: "device_id",
    TopicKind.AGENT_STATUS: "agent_id",
    TopicKind.STATION_STATUS: "station_id",
    TopicKind.PROVISION_RESPONSE: "device_id",
    TopicKind.CONFIG_SET_RESPONSE: "device_id",
}
# Answers whose schema depends on their "status": (ok schema, error schema).
_BY_STATUS = {
    TopicKind.PROVISION_RESPONSE: ("provision_ok", "provision_error"),
    TopicKind.CONFIG_SET_RESPONSE: ("config_set_ok", "config_set_error"),
}
_FLEET_STATES = ("in_sync", "failed", "pending", "stale", "never_applied")
_PRESENCES = ("online", "offline", "unknown")


@dataclass(frozen=True)
class Violation:
    topic: str
    reason: str
    publisher: str  # the role the contract gives the topic's publisher

    def __str__(self) -> str:
        return f"{self.topic}: {self.reason}"


@dataclass(frozen=True)
class ContractTopic:
    spec: TopicSpec
    identifier: str  # as found in the topic, valid or not
    suffix: str


def match_topic(root: str, topic: str) -> ContractTopic | None:
    """The contract topic ``topic`` is shaped like (any identifier segment), or None."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    for spec in TOPICS.values():
        segments = spec.segments
        below = spec.kind in RESPONSE_KINDS and len(rest) > len(segments)
        if len(rest) != len(segments) and not below:
            continue
        pairs = list(zip(segments, rest, strict=False))
        if all(want == got for want, got in pairs if not want.startswith("{")):
            identifier = next(got for want, got in pairs if want.startswith("{"))
            return ContractTopic(spec, identifier, "/".join(rest[len(segments) :]))
    return None


@cache
def schema_validator(stem: str) -> Draft202012Validator:
    path = codegen.GENERATED_DIR / codegen.schema_path(stem)
    return Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


def schema_errors(stem: str, document: object) -> list[str]:
    found = sorted(schema_validator(stem).iter_errors(document), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in found]


def check_message(root: str, topic: str, payload: bytes, retain: bool) -> list[Violation]:
    """Every way one message breaks the contract (empty when it conforms or is not ours)."""
    found = match_topic(root, topic)
    if found is None or found.spec.kind in IGNORED_KINDS:
        return []
    spec = found.spec

    def violation(reason: str) -> list[Violation]:
        return [Violation(topic, reason, spec.publisher)]

    if not is_identifier(found.identifier):
        return violation(f"{found.identifier!r} is not a valid {spec.id_name}")
    if not payload:
        return [] if retain else violation("zero-length payload that is not a retained clear")
    if retain != spec.retained:
        return violation("must be retained" if spec.retained else "must not be retained")
    try:
        document: Any = loads_strict(payload)
    except StrictJsonError as exc:
        return violation(f"not UTF-8 JSON: {exc.message}")
    if not isinstance(document, dict):
        return violation(f"not a JSON object: {type(document).__name__}")
    stem = codegen.TOPIC_SCHEMAS[spec.kind][0]
    if spec.kind in _BY_STATUS:
        ok_stem, error_stem = _BY_STATUS[spec.kind]
        stem = ok_stem if document.get("status") == "ok" else error_stem
    problems = [f"{stem}: {error}" for error in schema_errors(stem, document)]
    problems += _cross_checks(spec.kind, found.identifier, document)
    return [Violation(topic, problem, spec.publisher) for problem in problems]


def _cross_checks(kind: TopicKind, identifier: str, document: dict[str, Any]) -> list[str]:
    problems = []
    field = _ID_FIELDS.get(kind)
    if field is not None and field in document and document[field] != identifier:
        problems.append(f"{field} {document[field]!r} does not match the topic's {identifier!r}")
    if kind is TopicKind.DEVICE_CONFIG and isinstance(document.get("config"), dict):
        expected = config_sha256(document["config"])
        if document.get("sha256") != expected:
            problems.append(f"sha256 is not the canonical config's hash ({expected})")
    if kind is TopicKind.AGENT_FLEET:
        names = ("devices", *_FLEET_STATES, *_PRESENCES)
        counts = {n: value for n in names if isinstance(value := document.get(n), int)}
        if len(counts) == len(names):  # else the schema has already said what is wrong
            states = sum(counts[name] for name in _FLEET_STATES)
            presence = sum(counts[name] for name in _PRESENCES)
            if states != counts["devices"] or presence != counts["devices"]:
                problems.append(
                    f"counts do not add up: devices={counts['devices']}, "
                    f"config states {states}, presence {presence}"
                )
    return problems


class ConformanceMonitor:
    """Watch ``{root}/#`` on a broker and collect every contract violation seen."""

    def __init__(self, host: str, port: int, root: str = "iot") -> None:
        self.host = host
        self.port = port
        self.root = check_root(root)
        self.records: list[Violation] = []
        self.violations: list[str] = []
        self.checked = 0  # messages seen under the root, conforming or not
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._marker_topic = f"{root}/_conformance/{uuid.uuid4().hex}"
        self._flushed: str | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"conformance-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect, start the client thread, and return once the subscription is active."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"conformance monitor not subscribed within {timeout} s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> ConformanceMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use ------------------------------------------------------------------

    def violations_from(self, *publishers: str) -> list[str]:
        """Violations on topics whose contract publisher is one of ``publishers``."""
        with self._condition:
            return [str(v) for v in self.records if v.publisher in publishers]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("conformance monitor: condition not met in time")
                self._condition.wait(remaining)

    def flush(self, timeout: float = 10.0) -> None:
        """Return once the broker has delivered everything published to it before this call.

        Publishes a marker (outside the contract's topics) and waits for it to come back.
        """
        token = uuid.uuid4().hex
        self._client.publish(self._marker_topic, token.encode(), qos=1)
        self.wait_until(lambda: self._flushed == token, timeout)

    def assert_clean(self, *publishers: str) -> None:
        """Raise AssertionError listing the violations (of ``publishers`` only, when given)."""
        found = self.violations_from(*publishers) if publishers else list(self.violations)
        if found:
            raise AssertionError("contract violations:\n" + "\n".join(found))

    # -- paho callbacks (client thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            return
        options = SubscribeOptions(qos=0, retainAsPublished=True)
        client.subscribe(f"{self.root}/#", options=options)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if reason_codes and not reason_codes[0].is_failure:
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        payload = bytes(message.payload)
        if topic == self._marker_topic:
            with self._condition:
                self._flushed = payload.decode()
                self._condition.notify_all()
            return
        found = check_message(self.root, topic, payload, bool(message.retain))
        with self._condition:
            self.checked += 1
            self.records.extend(found)
            self.violations.extend(str(v) for v in found)
            self._condition.notify_all()
