"""``broker-agent``: run | station | provision | flash | status | config | broker-auth |
check-broker | bridge-config.

Every option also reads ``BROKER_AGENT_<OPTION>`` from the environment; a flag given on the
command line wins. Errors a user can fix end the process with one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from broker_agent import __version__
from broker_agent.errors import SetupError
from broker_agent.logs import configure_logging
from broker_agent.settings import AgentSettings, MqttSettings, StationSettings
from firmware_contracts.codes import FlashAfter

EXIT_SETUP = 2


def _size(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (decimal or 0x hex)") from exc


def _add_mqtt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker (env BROKER_AGENT_<OPTION>)")
    group.add_argument("--broker-url", help="mqtt://host[:port], mqtts://..., unix:///path")
    group.add_argument("--mqtt-username")
    group.add_argument("--mqtt-password-file", help="file whose first line is the password")
    group.add_argument("--ca-file", help="CA bundle for mqtts:// (verification is on by default)")
    group.add_argument("--topic-root", help="topic root (default: iot)")
    group.add_argument("--log-format", choices=["auto", "json", "console"])
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker-agent",
        description="Run an ESP32 fleet and its flashing bench from MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="the agent: config publisher + provisioning responder")
    _add_mqtt_options(run)
    run.add_argument("--agent-id")
    run.add_argument("--config-dir", help="directory of <device_id>.json files (default: configs)")
    run.add_argument("--secrets-dir", help="credentials directory (default: secrets)")
    run.add_argument("--broker-port", type=int, help="port of the private Mosquitto (default 1883)")
    run.add_argument("--mosquitto-conf", help="base config of the private Mosquitto")
    run.add_argument("--broker-data-dir", help="where the private Mosquitto keeps its data")
    run.add_argument("--broker-passwd-file", help="keep this Mosquitto password file in step")
    run.add_argument("--broker-acl-file", help="and this ACL file (default: beside it)")
    run.add_argument("--broker-pid-file", help="the broker's pid file (SIGHUP after rewrites)")
    run.add_argument("--service-accounts-file", help="agent/station/operator MQTT accounts")
    run.add_argument(
        "--issue-credentials",
        action="store_const",
        const=True,
        default=None,
        help="generate missing client_id/client_secret on first provisioning",
    )

    run.add_argument("--http-listen", help="health, metrics and console (default 127.0.0.1:8080)")

    station = commands.add_parser("station", help="the flash station daemon")
    _add_mqtt_options(station)
    station.add_argument("--station-id")
    station.add_argument("--simulate", type=int, metavar="N", help="serve N simulated ESP32 boards")
    station.add_argument("--manufacturing-log", help="JSON-lines log of finished jobs")
    station.add_argument("--provision-timeout-s", type=float)
    station.add_argument("--http-listen", help="health and metrics (default 127.0.0.1:8081)")
    station.add_argument(
        "--auto",
        metavar="SOURCE",
        help="zero-touch: flash every board plugged in; SOURCE is a mac,device_id CSV "
        "or a queue file of device_ids (docs/station.md)",
    )

    console = commands.add_parser("console", help="the operator console and REST API, standalone")
    _add_mqtt_options(console)
    console.add_argument("--http-listen", help="where to serve it (default 127.0.0.1:8082)")
    console.add_argument("--console-id", help="MQTT client id and reply scope")
    console.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password on stdin, print its hash for BROKER_AGENT_CONSOLE_PASSWORD_HASH",
    )

    provision = commands.add_parser("provision", help="fetch a device's NVS image and save it")
    _add_mqtt_options(provision)
    provision.add_argument("device_id")
    provision.add_argument("--partition-size", type=_size, required=True, help="bytes, e.g. 0x5000")
    provision.add_argument("-o", "--output", required=True, help="file to write the image to")
    provision.add_argument(
        "--offline", action="store_true", help="build locally from --secrets-dir"
    )
    provision.add_argument("--secrets-dir")
    provision.add_argument("--config-dir", help="with --offline: where device configs live")
    provision.add_argument(
        "--timeout",
        dest="provision_timeout_s",
        type=float,
        help="seconds to wait for the agent (default 10)",
    )

    auth = commands.add_parser(
        "broker-auth",
        help="write the production broker's password and ACL files once (docs/security.md)",
    )
    auth.add_argument("--out-dir", required=True, help="writes OUT_DIR/passwd and OUT_DIR/acl")
    auth.add_argument("--secrets-dir")
    auth.add_argument("--config-dir")
    auth.add_argument("--service-accounts-file")
    auth.add_argument("--topic-root", help="topic root (default: iot)")

    check = commands.add_parser(
        "check-broker",
        help="check that a broker has every feature broker-agent needs (docs/scaling.md)",
    )
    _add_mqtt_options(check)
    check.add_argument("url", nargs="?", help="broker URL (default: BROKER_AGENT_BROKER_URL)")
    check.add_argument("url2", nargs="?", help="a second URL of the same broker (cluster node)")
    check.add_argument(
        "--prefix", help="topic prefix for the test messages (default: <root>/check-broker)"
    )

    from broker_agent.commands.bridge_config import add_bridge_config_parser

    add_bridge_config_parser(commands)

    status = commands.add_parser("status", help="the fleet's config state and presence")
    _add_mqtt_options(status)
    status.add_argument("--state", help="only these states, e.g. failed,stale")
    status.add_argument("--offline", action="store_true", help="only offline devices")
    status.add_argument("--device", metavar="PATTERN", help="only device ids matching this glob")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.add_argument("--watch", action="store_true", help="keep showing it, live")
    status.add_argument("--pending-grace-s", type=float, help="pending grace period (default 300)")
    status.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")

    config = commands.add_parser("config", help="write or read one device's config over MQTT")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("set", "replace the config with a JSON object from FILE or stdin"),
        ("merge", "apply an RFC 7396 merge patch from FILE or stdin"),
        ("delete", "delete the config"),
        ("get", "print the retained config"),
    ):
        action = actions.add_parser(name, help=text)
        _add_mqtt_options(action)
        action.add_argument("device_id")
        if name in ("set", "merge"):
            action.add_argument("file", nargs="?", help="JSON file (default: stdin)")
        if name != "get":
            action.add_argument("--if-sha256", metavar="SHA|null", help="only if current")
        action.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")

    flash = commands.add_parser("flash", help="provision one attached board now")
    _add_mqtt_options(flash)
    flash.add_argument("device_id")
    flash.add_argument("--port", help="serial port or pyserial URL (socket://host:port)")
    flash.add_argument("--baud", type=int, default=460800)
    flash.add_argument(
        "--after", choices=[a.value for a in FlashAfter], default=FlashAfter.NO_RESET.value
    )
    flash.add_argument("--expected-mac")
    flash.add_argument(
        "--force", action="store_true", help="write even when the board holds the image"
    )
    flash.add_argument("--offline", action="store_true", help="build the image from --secrets-dir")
    flash.add_argument("--secrets-dir")
    flash.add_argument("--config-dir", help="with --offline: where device configs live")
    flash.add_argument("--station-id")
    flash.add_argument("--manufacturing-log")
    flash.add_argument("--provision-timeout-s", type=float)
    return parser


_SETTINGS_FIELDS = {
    "broker_url",
    "mqtt_username",
    "mqtt_password_file",
    "ca_file",
    "topic_root",
    "log_format",
    "log_level",
    "agent_id",
    "config_dir",
    "secrets_dir",
    "broker_port",
    "mosquitto_conf",
    "broker_data_dir",
    "issue_credentials",
    "station_id",
    "simulate",
    "auto",
    "manufacturing_log",
    "provision_timeout_s",
    "pending_grace_s",
    "broker_passwd_file",
    "broker_acl_file",
    "broker_pid_file",
    "service_accounts_file",
    "http_listen",
    "console_id",
}


def settings_from(args: argparse.Namespace, cls: type[MqttSettings]) -> Any:
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key in _SETTINGS_FIELDS and key in cls.model_fields and value is not None
    }
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SetupError(f"invalid settings: {problems}") from None


def run_async(main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run ``main`` until done or until SIGTERM/SIGINT cancels it (clean shutdown)."""

    async def runner() -> int | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await main()
        except asyncio.CancelledError:
            return 0

    return asyncio.run(runner()) or 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem: SetupError | None = None
    try:
        return _dispatch(args)
    except* SetupError as group:  # also when raised inside a TaskGroup (a bad broker URL)
        problem = _first_setup_error(group)
    print(f"broker-agent: error: {problem}", file=sys.stderr)
    return EXIT_SETUP


def _first_setup_error(group: BaseExceptionGroup[SetupError]) -> SetupError:
    first = group.exceptions[0]
    return first if isinstance(first, SetupError) else _first_setup_error(first)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from broker_agent.app import run_agent

        agent_settings: AgentSettings = settings_from(args, AgentSettings)
        configure_logging(agent_settings.log_format, agent_settings.log_level)
        return run_async(lambda: run_agent(agent_settings))
    if args.command == "broker-auth":
        from pathlib import Path

        from broker_agent.broker.auth_sync import write_broker_auth

        out_dir = Path(args.out_dir)
        write_broker_auth(settings_from(args, AgentSettings), out_dir)
        print(f"wrote {out_dir / 'passwd'} and {out_dir / 'acl'}")
        return 0
    if args.command == "bridge-config":
        from broker_agent.commands.bridge_config import bridge_config_command

        return bridge_config_command(args, settings_from(args, MqttSettings).topic_root)
    if args.command == "check-broker":
        from broker_agent.commands.check_broker import check_broker_command

        mqtt_settings: MqttSettings = settings_from(args, MqttSettings)
        configure_logging(mqtt_settings.log_format, args.log_level or "warning")
        return check_broker_command(args, mqtt_settings)
    if args.command in ("status", "config"):
        from broker_agent.commands.config import config_command
        from broker_agent.commands.status import status_command

        operator_settings: MqttSettings = settings_from(args, MqttSettings)
        configure_logging(operator_settings.log_format, args.log_level or "warning")
        command = status_command if args.command == "status" else config_command
        return command(args, operator_settings)
    if args.command == "console":
        from broker_agent.commands.console import console_command

        return console_command(args)
    if args.command == "provision":
        from broker_agent.commands.provision import provision_command

        return provision_command(args, settings_from(args, AgentSettings))
    station_settings: StationSettings = settings_from(args, StationSettings)
    configure_logging(station_settings.log_format, station_settings.log_level)
    if args.command == "station":
        from broker_agent.station.station import run_station

        return run_async(lambda: run_station(station_settings))
    from broker_agent.commands.flash import flash_command

    return flash_command(args, station_settings)


if __name__ == "__main__":
    sys.exit(main())
