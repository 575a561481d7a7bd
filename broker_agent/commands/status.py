"""``broker-agent status``: the fleet state (contract 6.2) as any operator computes it.

Reads what the broker retains, the config envelopes, ``config/applied`` acks and device
``status`` of every device, into the same ``FleetView`` the agent keeps, so the state shown is
the agent's (age from each envelope's ``updated_at``, the same grace period setting). It knows
when it has read everything without a fixed sleep, as the agent does: its three subscriptions
are QoS 0 (a broker's queue limit cannot drop any of a large fleet), then it publishes a random
marker on its own ``{root}/operators/<user>/sync`` topic (the production ACL grants an operator
``{root}/operators/<its user name>/#``) and subscribes to it; the broker queues every retained
message before it routes the marker.

Output: a table (device, state, presence, config and acked sha256 shortened, age, error), or
``--json``; ``--watch`` keeps the connection and redraws as retained messages change.
Exit status: 1 when a shown device is ``failed``, 2 for setup errors (bad options, broker
unreachable, no answer), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker_agent.commands.provision import request_scope
from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.fleet.state import Device, FleetView
from broker_agent.mqtt import Connection, Message, make_connection
from broker_agent.settings import MqttSettings
from firmware_contracts.codes import DevicePresence, FleetState
from firmware_contracts.topics import TopicKind, Topics

EXIT_FAILED = 1
EXIT_SETUP = 2
READ_TIMEOUT_S = 30.0
WATCH_REDRAW_S = 0.5  # at most this often on changes
WATCH_AGE_REDRAW_S = 5.0  # and this often anyway, for the age column
SHORT_SHA = 12
PIPED_WIDTH = 250


class RetainedReader:
    """Reads every retained message under some contract filters, then stays subscribed.

    ``read()`` returns once the marker is back: everything retained has been handed to
    ``on_message`` by then; later (live) messages keep arriving until the connection closes.
    """

    def __init__(
        self,
        settings: MqttSettings,
        url: str,
        kinds: dict[TopicKind, str],
        on_message: Callable[[TopicKind, str, bytes], None],
    ) -> None:
        self.topics = Topics(settings.topic_root)
        self.kinds = kinds  # kind -> filter
        self.on_message = on_message
        nonce = secrets.token_hex(6)
        scope = request_scope(settings, url, f"cli-{nonce}")
        self.marker_topic = f"{self.topics.root}/operators/{scope}/sync"
        self._nonce = nonce.encode()
        self._synced = asyncio.Event()
        self.connection = make_connection(
            settings, url, client_id=f"status-{nonce}", route=self._route
        )

    def _route(self, message: Message) -> None:
        if message.topic == self.marker_topic:
            if message.payload == self._nonce:
                self._synced.set()
            return
        match = self.topics.parse(message.topic)
        if match is not None and match.kind in self.kinds:
            self.on_message(match.kind, match.identifier, message.payload)

    async def read(self, timeout: float) -> None:
        connection: Connection = self.connection
        lost = asyncio.create_task(connection.wait_disconnected(), name="status-connection")
        self._lost = lost
        for topic_filter in self.kinds.values():
            await connection.subscribe(topic_filter, qos=0)
        await connection.subscribe(self.marker_topic, qos=0)
        await connection.publish(self.marker_topic, self._nonce, qos=0)
        synced = asyncio.ensure_future(self._synced.wait())
        done, _ = await asyncio.wait({synced, lost}, timeout=timeout, return_when="FIRST_COMPLETED")
        if lost in done:
            lost.result()  # raises why the connection ended
        if synced not in done:
            synced.cancel()
            raise SetupError(f"the broker did not return our marker within {timeout:g} s")

    async def close(self) -> None:
        lost = getattr(self, "_lost", None)
        if lost is not None:
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)


def fleet_reader(settings: MqttSettings, url: str, view: FleetView) -> RetainedReader:
    topics = Topics(settings.topic_root)
    handlers = {
        TopicKind.DEVICE_CONFIG: view.on_config,
        TopicKind.DEVICE_CONFIG_APPLIED: view.on_ack,
        TopicKind.DEVICE_STATUS: view.on_status,
    }

    def on_message(kind: TopicKind, device_id: str, payload: bytes) -> None:
        handlers[kind](device_id, payload)

    return RetainedReader(
        settings, url, {kind: topics.filter(kind) for kind in handlers}, on_message
    )


async def read_fleet(
    settings: MqttSettings, url: str, timeout: float = READ_TIMEOUT_S
) -> FleetView:
    """The whole fleet's state, as retained right now."""
    view = FleetView(settings.pending_grace_s)
    reader = fleet_reader(settings, url, view)
    async with reader.connection:
        try:
            await reader.read(timeout)
        finally:
            await reader.close()
    view.advance()
    return view


# -- selecting and showing -----------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    states: frozenset[FleetState] | None = None
    offline: bool = False
    pattern: str | None = None

    def __call__(self, device: Device) -> bool:
        if self.states is not None and device.state not in self.states:
            return False
        if self.offline and device.shown_presence is not DevicePresence.OFFLINE:
            return False
        return self.pattern is None or fnmatch.fnmatchcase(device.device_id, self.pattern)


def parse_states(text: str) -> frozenset[FleetState]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        return frozenset(FleetState(name) for name in names)
    except ValueError:
        known = ", ".join(state.value for state in FleetState)
        raise SetupError(f"--state {text!r}: use a comma-separated list of {known}") from None


def select(view: FleetView, selection: Selection) -> list[Device]:
    return sorted((d for d in view if selection(d)), key=lambda d: d.device_id)


def row(device: Device, now: float) -> dict[str, Any]:
    age = device.age_s(now)
    return {
        "device_id": device.device_id,
        "state": device.state.value if device.state else None,
        "presence": device.shown_presence.value,
        "config_sha256": device.config.sha256 if device.config else None,
        "acked_sha256": device.ack.sha256 if device.ack else None,
        "age_s": None if age is None else round(age, 1),
        "error": device.ack.error if device.ack and device.state is FleetState.FAILED else None,
    }


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for limit, unit, size in ((120, "s", 1), (7200, "m", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{max(0, int(seconds // size))}{unit}"
    return f"{int(seconds // 86400)}d"


_STYLES = {
    "in_sync": "green",
    "failed": "bold red",
    "pending": "yellow",
    "stale": "red",
    "never_applied": "magenta",
    "unmanaged": "dim",
}


def render_table(devices: list[Device], now: float) -> Any:
    from rich.table import Table

    table = Table(title=f"{len(devices)} devices", title_justify="left")
    for name in ("device", "state", "presence", "config", "acked", "age", "error"):
        table.add_column(name, no_wrap=name != "error")
    for device in devices:
        data = row(device, now)
        state = data["state"] or "-"
        table.add_row(
            data["device_id"],
            f"[{_STYLES.get(state, '')}]{state}[/]",
            data["presence"],
            (data["config_sha256"] or "-")[:SHORT_SHA],
            (data["acked_sha256"] or "-")[:SHORT_SHA],
            human_age(data["age_s"]),
            data["error"] or "",
        )
    return table


def exit_code(devices: list[Device]) -> int:
    return EXIT_FAILED if any(d.state is FleetState.FAILED for d in devices) else 0


def as_json(devices: list[Device], now: float) -> str:
    counts = dict.fromkeys([s.value for s in FleetState] + [p.value for p in DevicePresence], 0)
    for device in devices:
        if device.state is not None:
            counts[device.state.value] += 1
        counts[device.shown_presence.value] += 1
    return json.dumps({"counts": counts, "devices": [row(d, now) for d in devices]}, indent=1)


# -- the command ---------------------------------------------------------------------------


def status_command(args: argparse.Namespace, settings: MqttSettings) -> int:
    if settings.broker_url is None:
        raise SetupError("status needs a broker: pass --broker-url or set BROKER_AGENT_BROKER_URL")
    selection = Selection(
        parse_states(args.state) if args.state else None, bool(args.offline), args.device
    )
    try:
        if args.watch:
            try:
                return asyncio.run(_watch(settings, settings.broker_url, selection))
            except KeyboardInterrupt:
                return 0
        view = asyncio.run(read_fleet(settings, settings.broker_url, args.timeout))
    except BrokerUnavailableError as exc:
        print(f"broker-agent: error: broker_unavailable: {exc}", file=sys.stderr)
        return EXIT_SETUP
    now = time.time()
    devices = select(view, selection)
    if args.json:
        print(as_json(devices, now))
    else:
        from rich.console import Console

        # piped: as wide as the rows need, not the 80 columns rich assumes off a terminal
        Console(width=None if sys.stdout.isatty() else PIPED_WIDTH).print(
            render_table(devices, now)
        )
    return exit_code(devices)


async def _watch(settings: MqttSettings, url: str, selection: Selection) -> int:
    from rich.live import Live

    view = FleetView(settings.pending_grace_s)
    reader = fleet_reader(settings, url, view)
    async with reader.connection:
        try:
            await reader.read(READ_TIMEOUT_S)
            shown, drawn_at = -1, 0.0
            with Live(auto_refresh=False) as live:
                while True:
                    view.advance()
                    if view.version != shown or time.monotonic() - drawn_at > WATCH_AGE_REDRAW_S:
                        shown, drawn_at = view.version, time.monotonic()
                        live.update(render_table(select(view, selection), time.time()))
                        live.refresh()
                    await asyncio.sleep(WATCH_REDRAW_S)
        finally:
            await reader.close()
