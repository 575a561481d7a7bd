"""Settings: every option has a ``BROKER_AGENT_<OPTION>`` environment variable.

Command-line flags override the environment; the environment overrides the defaults here.
Secrets (the MQTT password) are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker_agent.errors import RefusedFile, SetupError
from broker_agent.files import read_regular_file
from broker_agent.logs import get_logger
from firmware_contracts.codes import DEFAULT_PENDING_GRACE_S
from firmware_contracts.identifiers import check_identifier
from firmware_contracts.topics import DEFAULT_ROOT, check_root

PROJECT_DIR = Path(__file__).resolve().parent.parent

log = get_logger(__name__)


def _default_id(prefix: str) -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname().lower())
    return f"{prefix}-{host}".strip("-_")[:64] or prefix


class MqttSettings(BaseSettings):
    """How to reach the broker; shared by every command."""

    model_config = SettingsConfigDict(env_prefix="BROKER_AGENT_", extra="ignore")

    broker_url: str | None = Field(
        default=None,
        description="mqtt://[user:pass@]host[:port], mqtts://..., unix:///path, or a "
        "comma-separated list of them (tried in turn). Unset for `run`: start a private Mosquitto.",
    )
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = Field(
        default=None, description="File holding the MQTT password (first line)."
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for mqtts:// brokers.")
    tls_insecure: bool = Field(
        default=False, description="Skip TLS certificate verification (testing only)."
    )
    topic_root: str = DEFAULT_ROOT
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    provision_timeout_s: float = Field(
        default=10.0, gt=0, description="How long to wait for an agent's provisioning answer."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    pending_grace_s: float = Field(
        default=DEFAULT_PENDING_GRACE_S,
        gt=0,
        description="How long a new config may wait for its ack before the device counts as "
        "stale or never_applied (contract 6.2).",
    )
    presence_expiry_s: int = Field(
        default=300,
        ge=1,
        description="Message expiry of the retained online status (a lost will shows a dead "
        "service online at most this long).",
    )
    presence_refresh_s: float = Field(
        default=120.0, gt=0, description="How often the online status is re-published."
    )

    @field_validator("topic_root")
    @classmethod
    def _root(cls, value: str) -> str:
        return check_root(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_urls(cls, value: str | None) -> str | None:
        """Spaces around the commas of a URL list are dropped (the URLs are checked at use)."""
        if value is None:
            return None
        return ",".join(entry.strip() for entry in value.split(","))

    @model_validator(mode="after")
    def _refresh_before_expiry(self) -> MqttSettings:
        if self.presence_refresh_s >= self.presence_expiry_s:
            raise ValueError(
                "presence_refresh_s must be shorter than presence_expiry_s, or the online "
                "status expires between refreshes"
            )
        return self

    def password(self) -> str | None:
        """The MQTT password: the setting, or the first line of the password file.

        The file is read at every (re)connect (a rotated secret is picked up), through
        ``files.read_regular_file``: a FIFO at that path used to block the event loop for good.
        A file that cannot be read is a ``SetupError`` the first time (exit 2 at start); once
        a good password was read, a failed read (a Kubernetes secret mid-rotation) is logged
        and the last good password is used, so a reconnect never ends the process.
        """
        if self.mqtt_password is not None:
            return self.mqtt_password.get_secret_value()
        path = self.mqtt_password_file
        if path is None:
            return None
        try:
            return _read_password_file(path)
        except SetupError as exc:
            last_good = _LAST_GOOD_PASSWORDS.get(path)
            if last_good is None:
                raise
            log.warning("mqtt_password_file_unreadable", error=str(exc), using="last good password")
            return last_good


MAX_PASSWORD_FILE_BYTES = 4096
_LAST_GOOD_PASSWORDS: dict[Path, str] = {}
"""Per password file, the last password read from it (kept in memory only, never logged)."""


def _read_password_file(path: Path) -> str:
    """The first line of ``path``; ``SetupError`` (naming the path, never content) if unreadable."""
    try:
        raw, _ = read_regular_file(path, MAX_PASSWORD_FILE_BYTES, inside="/")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        reason = "it does not exist"
    except RefusedFile as exc:
        reason = f"it {exc.reason}"
    except UnicodeDecodeError:
        reason = "it is not UTF-8 text"
    else:
        lines = text.splitlines()
        password = lines[0] if lines else ""
        _LAST_GOOD_PASSWORDS[path] = password
        return password
    raise SetupError(f"cannot read the MQTT password file {path}: {reason}")


def _checked_listen(value: str) -> str:
    """An HTTP listen address, checked at start-up (``http.listen`` has no web framework)."""
    from broker_agent.http.listen import parse_listen

    parse_listen(value)
    return value.strip()


class ConsoleSettings(MqttSettings):
    """The operator console (``broker-agent console``, and beside the agent in ``run``)."""

    http_listen: str = Field(
        default="127.0.0.1:8082", description="Where `console` serves (host:port)."
    )
    console_id: str = Field(
        default_factory=lambda: _default_id("console"),
        description="The console's MQTT client id, and the scope of its reply topics.",
    )
    console_username: str = Field(default="operator", description="The operator login name.")
    console_password_hash: SecretStr | None = Field(
        default=None,
        description="scrypt hash of the operator password (`broker-agent console "
        "--hash-password`); required unless the console listens on loopback only.",
    )
    console_mqtt_username: str | None = Field(
        default=None, description="The console's own MQTT account (default: mqtt_username)."
    )
    console_mqtt_password_file: Path | None = Field(
        default=None, description="...and its password file (default: mqtt_password_file)."
    )
    console_request_timeout_s: float = Field(
        default=10.0, gt=0, description="How long the console waits for an agent's answer."
    )

    @field_validator("http_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        return _checked_listen(value)

    @field_validator("console_id")
    @classmethod
    def _console_id(cls, value: str) -> str:
        return check_identifier(value, "console_id")


class AgentSettings(MqttSettings):
    """``broker-agent run``: config publisher + provisioning responder."""

    agent_id: str = Field(default_factory=lambda: _default_id("agent"))
    config_dir: Path = Path("configs")
    secrets_dir: Path = Path("secrets")
    issue_credentials: bool = False
    max_config_bytes: int = Field(default=256 * 1024, gt=0)
    prune_max_share: float = Field(
        default=0.5, ge=0, le=1, description="Block clearing more than this share of the fleet."
    )
    prune_min_devices: int = Field(
        default=5, ge=0, description="...and more than this many devices at once."
    )
    watch_debounce_ms: int = Field(default=50, ge=1)
    watch_mode: Literal["auto", "inotify", "poll"] = Field(
        default="auto",
        description="How to notice config file changes: inotify, poll, or auto (poll when the "
        "config directory is on a network file system, where inotify misses other hosts' edits).",
    )
    watch_poll_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the poll mode looks at every file."
    )
    event_detail_limit: int = Field(
        default=100,
        ge=0,
        description="A reconcile or burst that publishes (or clears) more devices than this "
        "emits one summary event with a count instead of one event per device.",
    )
    publish_concurrency: int = Field(default=128, ge=1, le=1000)
    config_writes: bool = Field(
        default=True,
        description="Accept config writes over MQTT (config/set, contract 6.3); false answers "
        "writes_disabled.",
    )
    provision_shared_group: str | None = Field(
        default="broker-agents",
        description="MQTT v5 shared-subscription group for provisioning requests "
        "(replicas in one group split the requests); empty for a plain subscription.",
    )
    # the production broker's password and ACL files, kept in step with the secrets directory
    # (docs/security.md); unset: no sync
    broker_passwd_file: Path | None = Field(
        default=None, description="Write the broker's password file here (enables the sync)."
    )
    broker_acl_file: Path | None = Field(
        default=None, description="The broker's ACL file (default: acl beside the passwords)."
    )
    broker_pid_file: Path | None = Field(
        default=None, description="The broker's pid file: it gets SIGHUP after each rewrite."
    )
    service_accounts_file: Path | None = Field(
        default=None,
        description="Agent/station/operator accounts (default <secrets_dir>/_broker_users.json).",
    )
    broker_auth_group: str | None = Field(
        default=None, description="Group owning the written files (e.g. the broker's)."
    )
    # the private broker started when broker_url is unset
    broker_port: int = Field(default=1883, ge=1, le=65535)
    mosquitto_conf: Path = PROJECT_DIR / "mosquitto.conf"
    mosquitto_bin: str = "mosquitto"
    broker_data_dir: Path = Path(".broker-agent/mosquitto")
    http_listen: str = Field(
        default="127.0.0.1:8080",
        description="Health, readiness, metrics and the operator console (host:port; '' = off).",
    )
    console: bool = Field(
        default=True, description="Serve the operator console on the HTTP listener too."
    )

    @field_validator("http_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        return _checked_listen(value)

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        return check_identifier(value, "agent_id")


class StationSettings(MqttSettings):
    """``broker-agent station`` and ``broker-agent flash``."""

    station_id: str = Field(default_factory=lambda: _default_id("station"))
    secrets_dir: Path = Path("secrets")
    manufacturing_log: Path = Path("manufacturing-log.jsonl")
    port_scan_interval_s: float = Field(default=2.0, gt=0)
    simulate: int = Field(default=0, ge=0, le=32, description="Serve N simulated boards.")
    auto: Path | None = Field(
        default=None,
        description="Zero-touch bench mode: flash every board plugged in, its device_id from "
        "this MAC map (*.csv: mac,device_id) or queue file (one device_id per line).",
    )
    http_listen: str = Field(
        default="127.0.0.1:8081",
        description="Health, readiness and metrics of `station` (host:port; '' = off).",
    )

    @field_validator("http_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        return _checked_listen(value)

    @field_validator("station_id")
    @classmethod
    def _station_id(cls, value: str) -> str:
        return check_identifier(value, "station_id")
