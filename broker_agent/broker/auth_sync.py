"""Keep Mosquitto's password and ACL files in step with the secrets directory.

    secrets dir (+ service accounts file) --watch--> passwd + acl (atomic, 0640) --SIGHUP--> broker

``BrokerAuthSync.run()`` renders both files at start and again after every change in the
secrets directory (read through ``provisioning.secrets.SecretsReader``, the reader provisioning
uses, so a device gets a broker account only when its secrets file passes the same rules),
rewrites a file only when its text changed, and then sends SIGHUP to the broker, which re-reads
both files without dropping anyone. Credentials issued at provisioning time are written into
``<secrets_dir>/<device_id>.json``, so a freshly provisioned device can connect within one
watch debounce. A broker the agent does not manage can use ``write_broker_auth`` instead
(generate, copy, reload).

A missing or invalid service accounts file, or a missing secrets directory, leaves the files
as they are (logged as ``broker_auth_not_written``): writing them without the fleet or without
the agent's own account would lock those clients out at their next connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_agent.broker.acl import render_acl
from broker_agent.broker.users import (
    SERVICE_ACCOUNTS_FILE,
    BrokerUsers,
    PasswordFile,
    Refusal,
    ServiceAccounts,
    collect_users,
)
from broker_agent.errors import SetupError
from broker_agent.files import write_atomically
from broker_agent.fleet.watcher import DirectoryWatcher
from broker_agent.logs import get_logger
from broker_agent.provisioning.secrets import SecretsReader
from broker_agent.settings import AgentSettings

log = get_logger(__name__)

FILE_MODE = 0o640  # owner writes; the broker's group may read (mosquitto drops to its own user)
PASSWD_NAME = "passwd"  # noqa: S105 - a file name, not a password
ACL_NAME = "acl"

BrokerPid = int | Callable[[], int | None] | None


@dataclass(frozen=True)
class BrokerAuthSettings:
    """What the sync needs; ``from_agent`` reads it from ``AgentSettings``.

    AgentSettings fields (env ``BROKER_AGENT_<NAME>``): ``broker_passwd_file`` (enables the
    sync), ``broker_acl_file`` (default: ``acl`` next to the password file),
    ``broker_pid_file``, ``service_accounts_file`` (default
    ``<secrets_dir>/_broker_users.json``), ``broker_auth_group`` (group name or gid given to
    the files, e.g. the broker's).
    """

    secrets_dir: Path
    config_dir: Path
    passwd_file: Path
    acl_file: Path
    topic_root: str = "iot"
    service_accounts_file: Path | None = None
    pid_file: Path | None = None
    group: str | None = None
    debounce_ms: int = 50

    @property
    def accounts_file(self) -> Path:
        return self.service_accounts_file or self.secrets_dir / SERVICE_ACCOUNTS_FILE

    @classmethod
    def from_agent(
        cls, settings: AgentSettings, out_dir: Path | None = None
    ) -> BrokerAuthSettings | None:
        """The sync's settings, or None when no password file is configured (sync off).

        With ``out_dir``, the files are ``<out_dir>/passwd`` and ``<out_dir>/acl`` whatever the
        settings say (``write_broker_auth``).
        """
        passwd: Path | None = _optional_path(settings, "broker_passwd_file")
        acl: Path | None = _optional_path(settings, "broker_acl_file")
        if out_dir is not None:
            passwd, acl = out_dir / PASSWD_NAME, out_dir / ACL_NAME
        if passwd is None:
            return None
        group = settings.broker_auth_group
        return cls(
            secrets_dir=settings.secrets_dir,
            config_dir=settings.config_dir,
            passwd_file=passwd,
            acl_file=acl or passwd.with_name(ACL_NAME),
            topic_root=settings.topic_root,
            service_accounts_file=_optional_path(settings, "service_accounts_file"),
            pid_file=_optional_path(settings, "broker_pid_file"),
            group=str(group) if group is not None else None,
            debounce_ms=settings.watch_debounce_ms,
        )


def _optional_path(settings: AgentSettings, name: str) -> Path | None:
    value: Any = getattr(settings, name)
    return Path(value) if value is not None else None


@dataclass(frozen=True)
class SyncResult:
    changed: bool  # a file was rewritten
    reloaded: bool  # SIGHUP was sent
    users: BrokerUsers | None = None  # None: nothing written (see ``error``)
    error: str | None = None


class BrokerAuthSync:
    """The agent's broker-auth service: ``await run()`` until cancelled.

    ``broker_pid`` (a pid, or a callable returning one, e.g. the private broker's
    ``Popen.pid``) wins over ``settings.pid_file``; with neither, changes are written and a
    ``broker_reload_needed`` line says that someone has to reload the broker.
    """

    def __init__(self, settings: BrokerAuthSettings, *, broker_pid: BrokerPid = None) -> None:
        self.settings = settings
        self.broker_pid = broker_pid
        self.ready = asyncio.Event()  # set once the first sync ran and changes are watched
        self.syncs = 0  # completed sync attempts
        self.synced = asyncio.Event()  # set after each attempt; clear it to wait for the next
        self._passwords = PasswordFile()
        self._adopted = False
        self._reader = SecretsReader(settings.secrets_dir)
        self._lock = threading.Lock()
        self._dirty = asyncio.Event()
        self._refused: set[Refusal] = set()

    @classmethod
    def from_agent(
        cls, settings: AgentSettings, *, broker_pid: BrokerPid = None
    ) -> BrokerAuthSync | None:
        auth = BrokerAuthSettings.from_agent(settings)
        return cls(auth, broker_pid=broker_pid) if auth is not None else None

    async def run(self) -> None:
        s = self.settings
        # The config directory no longer decides anything here (device user = device_id), but
        # an edit there still triggers a sync, as before: operators and tests rely on it.
        watched = {s.secrets_dir.resolve(), s.config_dir.resolve()}
        watched.add(s.accounts_file.resolve().parent)
        watchers = [
            DirectoryWatcher(
                path,
                self._on_changes,
                self._on_restart,
                debounce_ms=s.debounce_ms,
            )
            for path in sorted(watched)
        ]
        async with asyncio.TaskGroup() as group:
            for index, watcher in enumerate(watchers):
                group.create_task(watcher.run(), name=f"broker-auth-watcher-{index}")
            for watcher in watchers:
                await watcher.ready.wait()
            await self.sync_once()  # after the watchers: no change can slip between the two
            self.ready.set()
            group.create_task(self._loop(), name="broker-auth-sync")

    async def sync_once(self) -> SyncResult:
        """Render, rewrite what changed, reload the broker if anything did (off the loop)."""
        try:
            return await asyncio.to_thread(self.sync_blocking)
        finally:
            self.syncs += 1
            self.synced.set()

    def sync_blocking(self) -> SyncResult:
        with self._lock:
            return self._sync()

    # -- internals ----------------------------------------------------------------------------
    def _on_changes(self, names: set[str]) -> None:
        self._dirty.set()

    def _on_restart(self) -> None:
        self._dirty.set()

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.sync_once()

    def _sync(self) -> SyncResult:
        s = self.settings
        try:
            accounts = ServiceAccounts.load(s.accounts_file)
            users = collect_users(s.secrets_dir, accounts, reader=self._reader)
            if not self._adopted:  # keep the hashes of a file written before we started
                with contextlib.suppress(FileNotFoundError):
                    self._passwords.adopt(s.passwd_file.read_text(encoding="utf-8"))
                self._adopted = True
            passwd_text = self._passwords.render(users.passwords)
            acl_text = render_acl(s.topic_root, accounts)
            gid = _group_id(s.group)
            changed = write_if_changed(s.passwd_file, passwd_text, gid)
            changed = write_if_changed(s.acl_file, acl_text, gid) or changed
        except (SetupError, OSError, ValueError) as exc:
            message = str(exc) if isinstance(exc, SetupError | ValueError) else _os_error(exc)
            log.error("broker_auth_not_written", error=message)
            return SyncResult(changed=False, reloaded=False, error=message)
        self._log_refusals(users)
        reloaded = self._reload() if changed else False
        log.info(
            "broker_auth_synced" if changed else "broker_auth_unchanged",
            users=len(users.passwords),
            devices=users.devices,
            refused=len(users.refused),
            without_secret=users.without_secret,
            reloaded=reloaded,
        )
        return SyncResult(changed=changed, reloaded=reloaded, users=users)

    def _log_refusals(self, users: BrokerUsers) -> None:
        current = set(users.refused)
        for refusal in sorted(current - self._refused, key=lambda r: (r.device_id, r.reason)):
            log.warning(
                "broker_device_refused",
                device_id=refusal.device_id,
                reason=refusal.reason.value,
                detail=refusal.detail,
            )
        self._refused = current

    def _pid(self) -> int | None:
        if callable(self.broker_pid):
            return self.broker_pid()
        if self.broker_pid is not None:
            return self.broker_pid
        if self.settings.pid_file is None:
            return None
        text = self.settings.pid_file.read_text(encoding="ascii").strip()
        return int(text.split()[0]) if text else None

    def _reload(self) -> bool:
        try:
            pid = self._pid()
        except (OSError, ValueError) as exc:
            log.warning("broker_reload_failed", reason=f"pid file: {_describe(exc)}")
            return False
        if pid is None:
            log.warning("broker_reload_needed", hint="send SIGHUP to mosquitto to apply")
            return False
        problem = _not_a_broker(pid) if self.broker_pid is None else None
        if problem is not None:  # a pid file from another PID namespace, or a stale one
            log.warning("broker_reload_failed", pid=pid, reason=problem)
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            log.warning("broker_reload_failed", pid=pid, reason=_describe(exc))
            return False
        log.info("broker_reloaded", pid=pid)
        return True


def _not_a_broker(pid: int) -> str | None:
    """Why ``pid`` (read from a pid file) must not get SIGHUP; None when it looks right.

    SIGHUP ends most processes, so a pid that names some other process (the file was written
    in another container's PID namespace, or the broker died and the number was reused) is
    refused. Where ``/proc`` is missing, the pid is trusted.
    """
    if pid <= 0 or pid == os.getpid():
        return f"pid {pid} is not the broker"
    try:
        name = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else f"no process {pid}"
    except OSError:
        return None
    if "mosquitto" not in name:
        return f"pid {pid} is {name[:32]!r}, not mosquitto"
    return None


def _describe(exc: Exception) -> str:
    return _os_error(exc) if isinstance(exc, OSError) else str(exc)


def _os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SetupError(f"broker_auth_group {group!r}: no such group") from None


def write_if_changed(path: Path, text: str, gid: int | None = None) -> bool:
    """Atomically replace ``path`` (mode 0640, group ``gid``) unless it already holds ``text``."""
    data = text.encode("utf-8")
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        same_owner = gid is None or info.st_gid == gid
        if (info.st_mode & 0o777) == FILE_MODE and same_owner and path.read_bytes() == data:
            return False
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_atomically(path, data, FILE_MODE, gid)
    return True


def write_broker_auth(settings: AgentSettings, out_dir: Path) -> None:
    """Write ``<out_dir>/passwd`` and ``<out_dir>/acl`` once (for a broker we do not manage).

    Copy them to the broker's ``password_file``/``acl_file`` and reload it (SIGHUP). Raises
    ``SetupError`` when the service accounts or the secrets directory are unusable.
    """
    auth = BrokerAuthSettings.from_agent(settings, out_dir=out_dir)
    assert auth is not None
    result = BrokerAuthSync(auth).sync_blocking()
    if result.error is not None:
        raise SetupError(result.error)
