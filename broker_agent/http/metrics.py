"""Prometheus metrics: one small class per process kind, each on its own registry.

``AgentMetrics`` (``broker-agent run``) and ``StationMetrics`` (``broker-agent station``) own a
``CollectorRegistry`` each instead of prometheus_client's global one, so several services can
run in one process (the tests do) without their series colliding. The services call plain
methods (``metrics.config_rejected(code)``); nothing here knows MQTT or HTTP, and importing
this module does not import the web framework (prometheus_client costs ~16 ms to import).

Label values are bounded: codes come from the ``firmware_contracts`` enums (plus ``ok``),
never device ids, request ids or file names, so a fleet of 10,000 devices still exposes a few
hundred series. Every labelled series exists from the start at 0, so ``rate()`` and
``increase()`` see the first error instead of a series appearing mid-window.

Values that are state rather than events (devices by fleet state and presence, readiness) are
read from callables at scrape time, so they can never drift from what the service computes.

The names and their meaning are listed in docs/operations.md; a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from broker_agent import __version__
from firmware_contracts.codes import (
    ConfigErrorCode,
    ConfigWriteErrorCode,
    DevicePresence,
    FlashErrorCode,
    FleetState,
    ProvisionErrorCode,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
"""No ``*_created`` series next to every counter and histogram child: they add half again to
the series (measured: 64 -> 96 for the agent, 58 -> 81 for the station) and no alert here
uses them. Process-wide, as the library offers it; only this module uses prometheus_client."""

PREFIX = "broker_agent"
OK = "ok"
"""The ``code`` label of a success, next to the contract's error codes."""

Readiness = Callable[[], str | None]
"""``None`` when the service is ready, else the reason it is not (served by ``/readyz``)."""

FleetCounts = Callable[[], Mapping[str, int] | None]
"""Devices per ``FleetState`` and per ``DevicePresence`` value, as in the retained fleet summary
(contract 6.2: ``{"in_sync": 1180, ..., "online": 1150, ...}``); ``None`` until known."""

PROVISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds from request received to reply published. Measured here: 0.5 ms median with
TCP_NODELAY, ~44 ms per reply when Nagle + delayed ACK stall (notes/mosquitto-and-mqtt.md):
the buckets separate the two."""

FLASH_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds from job accepted to its final event. A simulated board takes ~0.35 s; a real one
adds UART time (the 6.7 KB stub alone is >= 0.6 s at 115200 baud) and the operator's BOOT
button; failures to connect end after esptool's 7 attempts."""


def _not_wired() -> str | None:
    return "starting"


class ServiceMetrics:
    """What every process kind exposes: build info, readiness, the broker connection."""

    def __init__(self, service: str, *, readiness: Readiness | None = None) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.readiness: Readiness = readiness or _not_wired
        """Read by ``/readyz`` and by the ``broker_agent_ready`` gauge: they cannot disagree.
        May be assigned after construction, once the service exists."""
        ProcessCollector(registry=self.registry)
        info = Gauge(
            f"{PREFIX}_info",
            "Always 1; the labels say which service and version this is.",
            ["service", "version"],
            registry=self.registry,
        )
        info.labels(service, __version__).set(1)
        self.registry.register(_StateCollector(self._ready_families))
        self._connected = Gauge(
            f"{PREFIX}_broker_connected",
            "1 while the MQTT session is up, else 0.",
            registry=self.registry,
        )
        self._reconnects = Counter(
            f"{PREFIX}_broker_reconnects",
            "MQTT connections made after the first one (each follows a lost connection).",
            registry=self.registry,
        )
        self._ever_connected = False

    def not_ready_reason(self) -> str | None:
        return self.readiness()

    def broker_connected(self) -> None:
        if self._ever_connected:
            self._reconnects.inc()
        self._ever_connected = True
        self._connected.set(1)

    def broker_disconnected(self) -> None:
        self._connected.set(0)

    def _ready_families(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily(
            f"{PREFIX}_ready", "1 when /readyz answers 200, else 0 (see /readyz for the reason)."
        )
        ready.add_metric([], 1.0 if self.readiness() is None else 0.0)
        yield ready


class AgentMetrics(ServiceMetrics):
    """``broker-agent run``: the config publisher, config writes and provisioning."""

    def __init__(self, *, readiness: Readiness | None = None, fleet: FleetCounts | None = None):
        super().__init__("agent", readiness=readiness)
        self.fleet = fleet
        """Read at every scrape; may be assigned after construction. ``None``: no fleet series."""
        self.registry.register(_StateCollector(self._fleet_families))
        r = self.registry
        self._published = Counter(
            f"{PREFIX}_configs_published", "Retained device configs published.", registry=r
        )
        self._cleared = Counter(
            f"{PREFIX}_configs_cleared",
            "Retained device configs cleared because their file was deleted.",
            registry=r,
        )
        self._prune_blocked = Counter(
            f"{PREFIX}_prune_blocked",
            "Times the mass-prune guard refused to clear configs (event prune_blocked).",
            registry=r,
        )
        self._rejected = _by_code(
            Counter(
                f"{PREFIX}_configs_rejected",
                "Config files not published, by the contract's config error code.",
                ["code"],
                registry=r,
            ),
            ConfigErrorCode,
            with_ok=False,
        )
        self._written = _by_code(
            Counter(
                f"{PREFIX}_config_writes",
                "config/set requests answered, by code (ok or the error code).",
                ["code"],
                registry=r,
            ),
            ConfigWriteErrorCode,
        )
        self._provisioned = _by_code(
            Counter(
                f"{PREFIX}_provision_replies",
                "Provisioning replies sent, by code (ok or the error code).",
                ["code"],
                registry=r,
            ),
            ProvisionErrorCode,
        )
        self._provision_seconds = Histogram(
            f"{PREFIX}_provision_reply_seconds",
            "Seconds from a provisioning request received to its reply published.",
            buckets=PROVISION_BUCKETS,
            registry=r,
        )

    def config_published(self, count: int = 1) -> None:
        """``count``: a batch reported as one event with a count (``event_detail_limit``)."""
        self._published.inc(count)

    def config_cleared(self, count: int = 1) -> None:
        self._cleared.inc(count)

    def prune_blocked(self) -> None:
        self._prune_blocked.inc()

    def config_rejected(self, code: ConfigErrorCode) -> None:
        self._rejected[ConfigErrorCode(code)].inc()

    def config_written(self, code: ConfigWriteErrorCode | None) -> None:
        """One ``config/set`` answered; ``code`` is ``None`` for ``ok``."""
        self._written[OK if code is None else ConfigWriteErrorCode(code)].inc()

    def provision_replied(self, code: ProvisionErrorCode | None, seconds: float) -> None:
        """One provisioning reply published; ``code`` is ``None`` for ``ok``."""
        self._provisioned[OK if code is None else ProvisionErrorCode(code)].inc()
        self._provision_seconds.observe(seconds)

    def _fleet_families(self) -> Iterable[Metric]:
        counts = self.fleet() if self.fleet is not None else None
        if counts is None:
            return
        states = GaugeMetricFamily(
            f"{PREFIX}_fleet_devices",
            "Devices by fleet state (contract 6.2), from the retained config, ack and status.",
            labels=["state"],
        )
        for state in FleetState:
            states.add_metric([state.value], float(counts.get(state.value, 0)))
        presence = GaugeMetricFamily(
            f"{PREFIX}_fleet_presence",
            "Devices by presence: online, offline (retained offline or will), unknown.",
            labels=["presence"],
        )
        for seen in DevicePresence:
            presence.add_metric([seen.value], float(counts.get(seen.value, 0)))
        yield states
        yield presence


class StationMetrics(ServiceMetrics):
    """``broker-agent station``: flash jobs and serial ports."""

    def __init__(self, *, readiness: Readiness | None = None) -> None:
        super().__init__("station", readiness=readiness)
        r = self.registry
        self._jobs = _by_code(
            Counter(
                f"{PREFIX}_flash_jobs",
                "Flash jobs finished, by code (ok or the error code of the final event).",
                ["code"],
                registry=r,
            ),
            FlashErrorCode,
        )
        self._job_seconds = Histogram(
            f"{PREFIX}_flash_job_seconds",
            "Seconds from a flash job accepted to its final event, by result (ok or error).",
            ["result"],
            buckets=FLASH_BUCKETS,
            registry=r,
        )
        for result in (OK, "error"):
            self._job_seconds.labels(result)
        self._attached = Gauge(
            f"{PREFIX}_ports_attached",
            "Candidate serial ports attached to the station.",
            registry=r,
        )
        self._busy = Gauge(
            f"{PREFIX}_ports_busy",
            "Serial ports with a flash job running.",
            registry=r,
        )

    def flash_job_finished(self, code: FlashErrorCode | None, seconds: float) -> None:
        """One job ended with ``ok`` (``code`` ``None``) or ``error``."""
        self._jobs[OK if code is None else FlashErrorCode(code)].inc()
        self._job_seconds.labels(OK if code is None else "error").observe(seconds)

    def ports(self, *, attached: int, busy: int) -> None:
        self._attached.set(attached)
        self._busy.set(busy)


def _by_code(counter: Counter, codes: type[StrEnum], *, with_ok: bool = True) -> dict[str, Counter]:
    """Every child of ``counter`` created up front (at 0), keyed by its ``code`` label."""
    labels = ([OK] if with_ok else []) + [code.value for code in codes]
    return {label: counter.labels(label) for label in labels}


class _StateCollector:
    """Families computed at scrape time from the service's own state."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def describe(self) -> Iterable[Metric]:
        return []
