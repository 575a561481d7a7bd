"""Watching the config directory with watchfiles, reporting changed file names in batches.

Names only: the publisher re-reads each named file, so any sequence of events an editor makes
(save-by-rename, in-place write, delete, rename) ends in the file's real final state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import watchfiles

from broker_agent.core.config_files import is_candidate
from broker_agent.logs import get_logger

log = get_logger(__name__)


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
    ) -> None:
        self.path = path
        self.on_changes = on_changes
        self.on_restart = on_restart
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.retry_s = retry_s
        self.ready = asyncio.Event()

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
        # Our own stop event: cancelling awatch alone waits for its worker thread's timeout
        # (seconds); setting the event ends that thread within one step.
        stop = asyncio.Event()
        changes = watchfiles.awatch(
            self.path,
            watch_filter=_watch_filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            recursive=False,
            stop_event=stop,
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
                pending = asyncio.ensure_future(anext(changes))
        except StopAsyncIteration:
            return
        finally:
            stop.set()
            with contextlib.suppress(StopAsyncIteration, asyncio.CancelledError, OSError):
                await pending
            await changes.aclose()
