"""Watching the config directory with watchfiles, reporting changed file names in batches.

Names only: the publisher re-reads each named file, so any sequence of events an editor makes
(save-by-rename, in-place write, delete, rename) ends in the file's real final state.

Mode (``BROKER_AGENT_WATCH_MODE``): ``inotify`` (the OS's notifications), ``poll`` (a stat of
every file each ``poll_interval_s``), or ``auto``: poll when the directory is on a network file
system (``fleet.mounts``), where inotify misses every change made on another host. The choice
is made again each time the watch is (re)armed, so a directory mounted later is seen right.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import watchfiles

from broker_agent.fleet.files import is_candidate
from broker_agent.fleet.mounts import MOUNTINFO, directory_mount
from broker_agent.logs import get_logger

log = get_logger(__name__)

WatchMode = Literal["auto", "inotify", "poll"]


def _watch_filter(change: watchfiles.Change, path: str) -> bool:
    return is_candidate(Path(path).name)


class DirectoryWatcher:
    """Runs until cancelled; ``ready`` is set once changes are being captured."""

    def __init__(
        self,
        path: Path,
        on_changes: Callable[[set[str]], None],
        on_restart: Callable[[], None],
        *,
        debounce_ms: int = 50,
        step_ms: int = 10,
        retry_s: float = 1.0,
        check_interval_ms: int = 1000,
        mode: WatchMode = "auto",
        poll_interval_s: float = 1.0,
        mountinfo: Path = MOUNTINFO,
    ) -> None:
        self.path = path
        self.on_changes = on_changes
        self.on_restart = on_restart
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.retry_s = retry_s
        self.check_interval_ms = check_interval_ms
        self.mode = mode
        self.poll_interval_s = poll_interval_s
        self.mountinfo = mountinfo
        self.polling: bool | None = None  # how the current watch works, once armed
        self.ready = asyncio.Event()

    def uses_polling(self) -> bool:
        """Whether to poll: as configured, or (``auto``) when the directory is on a network FS."""
        if self.mode != "auto":
            return self.mode == "poll"
        mount = directory_mount(self.path, self.mountinfo)
        return mount is not None and mount.is_network

    def _choose_polling(self) -> bool:
        polling = self.uses_polling()
        if polling != self.polling:
            mount = directory_mount(self.path, self.mountinfo)
            log.info(
                "config_dir_watch_mode",
                path=str(self.path),
                watch="poll" if polling else "inotify",
                setting=self.mode,
                fs_type=mount.fs_type if mount is not None else None,
                poll_interval_s=self.poll_interval_s if polling else None,
            )
        self.polling = polling
        return polling

    async def run(self) -> None:
        first = True
        while True:
            try:
                await self._watch()
            except (FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as exc:
                # A missing directory is not fatal: the reconcile reports it (prune_blocked)
                # and we keep trying until it is back.
                log.warning("config_dir_unwatchable", path=str(self.path), error=str(exc))
            if first:
                first = False
                self.ready.set()
            await asyncio.sleep(self.retry_s)
            if self.path.is_dir():
                self.on_restart()

    async def _watch(self) -> None:
        """Watch until the directory is gone or replaced (then ``run`` re-arms the watch)."""
        # Our own stop event: cancelling awatch alone waits for its worker thread's timeout
        # (seconds); setting the event ends that thread within one step.
        stop = asyncio.Event()
        identity = _identity(self.path)
        polling = self._choose_polling()
        changes = watchfiles.awatch(
            self.path,
            watch_filter=_watch_filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            recursive=False,
            stop_event=stop,
            # an empty batch every second lets us notice the directory itself being deleted
            # or replaced, which leaves the OS watch on a dead directory, silently
            rust_timeout=self.check_interval_ms,
            yield_on_timeout=True,
            force_polling=polling,
            poll_delay_ms=max(1, round(self.poll_interval_s * 1000)),
        )
        # awatch installs its OS watch synchronously in its first step; once that step has
        # run (one turn of the loop), every later change is captured.
        pending = asyncio.ensure_future(anext(changes))
        try:
            await asyncio.sleep(0)
            if pending.done() and pending.exception() is not None:
                await pending
            self.ready.set()
            while True:
                batch = await asyncio.shield(pending)
                names = {Path(path).name for _, path in batch}
                if names:
                    self.on_changes(names)
                if _identity(self.path) != identity:
                    log.warning("config_dir_replaced", path=str(self.path))
                    return
                pending = asyncio.ensure_future(anext(changes))
        except StopAsyncIteration:
            return
        finally:
            stop.set()
            try:
                with contextlib.suppress(StopAsyncIteration, OSError):
                    await pending
            except asyncio.CancelledError:
                # pending's own end is not ours to report, but a shutdown of this task
                # delivered here must go on (suppressed, the watcher would run on)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            finally:
                await changes.aclose()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)
