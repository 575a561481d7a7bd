"""``broker-agent bridge-config --site NAME --central URL``: a site broker's bridge sections.

Prints what ``broker.bridge`` renders (docs/multi-site.md). Mosquitto has no file reference for
``remote_password``, so the password has to be in the site broker's config; this command puts it
only where the operator asks: into ``-o FILE`` (written atomically, mode 0600) or, with
``--show-password``, on stdout. Otherwise the line is a placeholder. Nothing is logged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker_agent.broker.bridge import CentralBroker, SiteBridge, render_bridge, render_central_acl
from broker_agent.errors import SetupError
from broker_agent.files import write_atomically
from broker_agent.mqtt.urls import BrokerUrl, redact
from firmware_contracts.identifiers import InvalidIdentifierError


def add_bridge_config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bridge-config",
        help="print a site broker's bridge to the central broker (docs/multi-site.md)",
    )
    parser.add_argument("--site", required=True, help="the site's name (an identifier)")
    parser.add_argument("--central", required=True, help="mqtt://host[:port] or mqtts://...")
    parser.add_argument("--username", help="the bridge's account at the central broker")
    parser.add_argument("--password-file", help="file whose first line is that account's password")
    parser.add_argument("--cafile", "--ca-file", dest="bridge_cafile", help="CA for mqtts://")
    parser.add_argument("--topic-root", help="topic root (default: iot)")
    parser.add_argument(
        "--station",
        action="append",
        default=[],
        help="carry only this station's topics (repeat; default: every station)",
    )
    parser.add_argument(
        "--central-acl",
        action="store_true",
        help="print the central broker's ACL entries for the bridge accounts instead",
    )
    parser.add_argument(
        "--restart-timeout",
        type=int,
        nargs="+",
        metavar="S",
        help="reconnect delay: constant S, or jittered BASE CAP (default: 2 30)",
    )
    parser.add_argument("-o", "--output", help="write to this file (mode 0600) instead of stdout")
    parser.add_argument(
        "--show-password", action="store_true", help="print the password on stdout too"
    )


def site_bridge(args: argparse.Namespace, topic_root: str) -> SiteBridge:
    """The ``SiteBridge`` the options describe; ``SetupError`` for anything wrong."""
    url = BrokerUrl.parse(args.central)
    if url.scheme == "unix":
        raise SetupError("--central must be mqtt:// or mqtts://: a bridge connects over TCP")
    if url.password is not None:
        raise SetupError(
            f"--central {redact(args.central)!r}: put the password in --password-file, not the URL"
        )
    password = _read_password(Path(args.password_file)) if args.password_file else None
    try:
        return SiteBridge(
            site=args.site,
            central=CentralBroker(url.host, url.port, tls=url.scheme == "mqtts"),
            topic_root=topic_root,
            username=args.username or url.username,
            password=password,
            cafile=Path(args.bridge_cafile).resolve() if args.bridge_cafile else None,
            stations=tuple(args.station),
            restart_timeout=tuple(args.restart_timeout or (2, 30)),
        )
    except (InvalidIdentifierError, ValueError) as exc:
        raise SetupError(str(exc)) from None


def _read_password(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SetupError(f"cannot read the password file {path}: {reason}") from None
    if not lines or not lines[0]:
        raise SetupError(f"the password file {path} is empty")
    return lines[0]


def bridge_config_command(args: argparse.Namespace, topic_root: str) -> int:
    bridge = site_bridge(args, topic_root)
    if args.central_acl:
        try:
            text = render_central_acl(bridge)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
    else:
        text = render_bridge(bridge, include_password=bool(args.output or args.show_password))
    if args.output:
        output = Path(args.output)
        try:
            write_atomically(output, text.encode("utf-8"))
        except OSError as exc:
            raise SetupError(f"cannot write {output}: {exc.strerror}") from None
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
