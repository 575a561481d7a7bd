"""``broker-agent status``: the fleet state (contract 6.2) as any operator computes it.

Reads what the broker retains, the config envelopes, ``config/applied`` acks and device
``status`` of every device, into the same ``FleetView`` the agent keeps, so the state shown is
the agent's (age from each envelope's ``updated_at``, the same grace period setting). It knows
when it has read everything without a fixed sleep, as the agent does: its three subscriptions
are QoS 0 (a broker's queue limit cannot drop any of a large fleet), then it publishes a random
marker on its own ``{root}/operators/<user>/sync`` topic (the production ACL grants an operator
``{root}/operators/<its user name>/#``) and subscribes to it; the broker queues every retained
message before it routes the marker. The read goes through ``mqtt/retained.py``'s snapshot
reader rather than paho: 100,000 devices in 4.8 s where paho alone took 41 s on the same
loaded machine (docs/benchmarks.md).

Output: a table (device, state, presence, config and acked sha256 shortened, age, error), or
``--json``; ``--watch`` reads the same way on one ordinary connection (the snapshot reader
cannot stay for live updates, and a second connection on one account is kicked off under the
production profile), keeps it and redraws as retained messages change.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker_agent.commands.provision import request_scope
from broker_agent.errors import BrokerUnavailableError, SetupError
from broker_agent.fleet.publisher import RETAINED_READ_TIMEOUT_S
from broker_agent.fleet.state import Device, FleetView
from broker_agent.mqtt import Message, make_connection
from broker_agent.mqtt.retained import read_retained
from broker_agent.settings import MqttSettings
from firmware_contracts.codes import DevicePresence, FleetState
from firmware_contracts.identifiers import is_identifier
from firmware_contracts.topics import TOPICS, TopicKind, Topics

EXIT_FAILED = 1
EXIT_SETUP = 2
READ_TIMEOUT_S = 30.0
WATCH_REDRAW_S = 0.5  # at most this often on changes
WATCH_AGE_REDRAW_S = 5.0  # and this often anyway, for the age column
SHORT_SHA = 12
FLEET_KINDS = (TopicKind.DEVICE_CONFIG, TopicKind.DEVICE_CONFIG_APPLIED, TopicKind.DEVICE_STATUS)
PIPED_WIDTH = 250


def marker_topic(settings: MqttSettings, url: str) -> str:
    """Where this client's sync marker goes: ``{root}/operators/<user>/sync``."""
    scope = request_scope(settings, url, f"cli-{secrets.token_hex(6)}")
    return f"{Topics(settings.topic_root).root}/operators/{scope}/sync"


def device_router(
    root: str, handlers: Mapping[TopicKind, Callable[[str, bytes], None]]
) -> Callable[[str, bytes], None]:
    """Route ``{root}/devices/<id>/<suffix>`` to the handler of its kind.

    A dict lookup on the suffix, taken from the contract's topic table, instead of
    ``Topics.parse`` (which tries every template: ~17 us a message, measured, and a status
    read of 100,000 devices is 300,000 messages).
    """
    prefix = f"{root}/devices/"
    by_suffix = {TOPICS[kind].template.split("}/", 1)[1]: h for kind, h in handlers.items()}

    def route(topic: str, payload: bytes) -> None:
        if topic.startswith(prefix):
            device_id, _, suffix = topic[len(prefix) :].partition("/")
            handler = by_suffix.get(suffix)
            if handler is not None and is_identifier(device_id):
                handler(device_id, payload)

    return route


def fleet_filters(topics: Topics) -> list[str]:
    return [topics.filter(kind) for kind in FLEET_KINDS]


def fleet_route(topics: Topics, view: FleetView) -> Callable[[str, bytes], None]:
    handlers = dict(zip(FLEET_KINDS, (view.on_config, view.on_ack, view.on_status), strict=True))
    return device_router(topics.root, handlers)


async def read_fleet(
    settings: MqttSettings, url: str, timeout: float = READ_TIMEOUT_S
) -> FleetView:
    """The whole fleet's state, as retained right now."""
    topics = Topics(settings.topic_root)
    view = FleetView(settings.pending_grace_s)
    await read_retained(
        settings,
        url,
        fleet_filters(topics),
        fleet_route(topics, view),
        client_id=f"status-{secrets.token_hex(6)}",
        marker_topic=marker_topic(settings, url),
        timeout=timeout,
    )
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


def printable(text: str) -> str:
    """``text`` as a terminal can show it: a lone surrogate (which no encoder takes; the strict
    parser already refuses them, this is the last line) becomes U+FFFD, any other character
    that is not printable (escape sequences, new lines) a space."""
    return "".join(
        ch if ch.isprintable() else "\ufffd" if "\ud800" <= ch <= "\udfff" else " " for ch in text
    )


def render_table(devices: list[Device], now: float) -> Any:
    """The table; every value from a device is plain ``Text``, never rich markup (an ack's
    ``[/x]`` raised ``MarkupError`` and ended ``status``)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(devices)} devices", title_justify="left")
    for name in ("device", "state", "presence", "config", "acked", "age", "error"):
        table.add_column(name, no_wrap=name != "error")
    for device in devices:
        data = row(device, now)
        state = data["state"] or "-"
        table.add_row(
            Text(data["device_id"]),
            Text(state, style=_STYLES.get(state, "")),
            Text(data["presence"]),
            Text(printable(data["config_sha256"] or "-")[:SHORT_SHA]),
            Text(printable(data["acked_sha256"] or "-")[:SHORT_SHA]),
            Text(human_age(data["age_s"])),
            Text(printable(data["error"] or "")),
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
    """One connection, as the agent reads the fleet: subscribe (retained copies first, then
    live changes, in arrival order), publish a marker and wait for it to come back, then redraw
    on changes. One connection because under the production profile
    (``use_username_as_clientid``) a second one on the same account has the same client id,
    and each connect kicked the other off (it was a live connection plus a snapshot one)."""
    from rich.live import Live

    topics = Topics(settings.topic_root)
    view = FleetView(settings.pending_grace_s)
    route = fleet_route(topics, view)
    marker = marker_topic(settings, url)
    nonce = secrets.token_hex(8).encode()
    synced = asyncio.Event()

    def on_message(message: Message) -> None:
        if message.topic == marker:
            if message.payload == nonce:
                synced.set()
        else:
            route(message.topic, message.payload)

    connection = make_connection(
        settings, url, client_id=f"status-{secrets.token_hex(6)}", route=on_message
    )
    async with connection:
        lost = asyncio.create_task(connection.wait_disconnected(), name="status-connection")
        try:
            # a SUBACK waits behind the retained messages before it (fleet/publisher.py)
            for topic_filter in fleet_filters(topics):
                await connection.subscribe(topic_filter, qos=0, timeout=RETAINED_READ_TIMEOUT_S)
            await connection.subscribe(marker, qos=0, timeout=RETAINED_READ_TIMEOUT_S)
            await connection.publish(marker, nonce, qos=0)
            try:
                async with asyncio.timeout(RETAINED_READ_TIMEOUT_S):
                    await synced.wait()
            except TimeoutError:
                raise BrokerUnavailableError(
                    f"the marker on {marker} did not come back within "
                    f"{RETAINED_READ_TIMEOUT_S:g} s (may this account read and write it?)"
                ) from None
            shown, drawn_at = -1, 0.0
            with Live(auto_refresh=False) as live:
                while not lost.done():
                    view.advance()
                    if view.version != shown or time.monotonic() - drawn_at > WATCH_AGE_REDRAW_S:
                        shown, drawn_at = view.version, time.monotonic()
                        live.update(render_table(select(view, selection), time.time()))
                        live.refresh()
                    await asyncio.sleep(WATCH_REDRAW_S)
            lost.result()  # raises why the connection ended
            return EXIT_SETUP
        finally:
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)
