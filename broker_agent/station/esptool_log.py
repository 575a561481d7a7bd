"""Route esptool's one process-global logger to the flash job running on the calling thread.

esptool (through esp-pylib's ``EspLog``) sends every message and progress bar to a single
logger object. ``install()`` replaces it with ``EsptoolLogRouter``, which prints nothing:
text lines go to the stdlib logger ``esptool`` at debug level, and byte progress goes to
the ``JobLogBinding`` that the current thread bound with ``bound_to()``. Several jobs in
parallel threads therefore each see only their own progress.

A binding's ``checkpoint`` runs on every call esptool makes into the logger; raising from
it (on cancellation) unwinds esptool from wherever it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from esp_pylib.logger import EspLog, EspLogBase
from esptool.util import FatalError  # imports esptool first
from rich.errors import MarkupError
from rich.text import Text

esptool_logger = logging.getLogger("esptool")


@dataclass
class JobLogBinding:
    """What one job wants from esptool's logger."""

    port: str
    on_bytes: Callable[[int, int], None]
    checkpoint: Callable[[], None]
    _partial: str = field(default="", repr=False)


_state = threading.local()
_install_lock = threading.Lock()


def _current() -> JobLogBinding | None:
    binding: JobLogBinding | None = getattr(_state, "binding", None)
    return binding


@contextmanager
def bound_to(binding: JobLogBinding) -> Iterator[JobLogBinding]:
    """Send esptool's output on this thread to ``binding`` for the duration."""
    previous = _current()
    _state.binding = binding
    try:
        yield binding
    finally:
        _flush(binding)
        _state.binding = previous


def _plain(args: tuple[Any, ...], sep: str = " ", markup: bool = True) -> str:
    """esptool's messages are Rich markup; the log wants plain text."""
    text = sep.join(str(arg) for arg in args)
    if not markup:
        return text
    try:
        return Text.from_markup(text).plain
    except MarkupError:
        return text


def _emit(line: str, port: str | None) -> None:
    line = line.strip()
    if line:
        esptool_logger.debug("%s", line, extra={"port": port})


def _write(text: str) -> None:
    """Log complete lines; keep an unfinished one (``print(..., end='')``) for later."""
    binding = _current()
    if binding is None:
        for line in text.splitlines():
            _emit(line, None)
        return
    *lines, binding._partial = (binding._partial + text).split("\n")
    for line in lines:
        _emit(line, binding.port)


def _flush(binding: JobLogBinding) -> None:
    _emit(binding._partial, binding.port)
    binding._partial = ""


def _checkpoint() -> None:
    binding = _current()
    if binding is not None:
        binding.checkpoint()


class EsptoolLogRouter(EspLogBase):
    """The logger installed into esp-pylib: silent on stdout, routed per thread."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        _checkpoint()
        sep = str(kwargs.get("sep", " "))
        end = str(kwargs.get("end", "\n"))
        _write(_plain(args, sep, markup=kwargs.get("markup") is not False) + end)

    def note(self, *args: Any) -> None:
        self.print("NOTE:", *args)

    def hint(self, *args: Any) -> None:
        self.print("HINT:", *args)

    def debug(self, *args: Any) -> None:
        self.print(*args)

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self.print("WARNING:", *args)

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self.print("ERROR:", *args)

    # esptool still calls these older names in a few places
    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message)

    def die(self, *args: Any, exit_code: int = 1, suggestion: str | None = None) -> NoReturn:
        # never sys.exit() from a worker thread of a long-running service
        raise FatalError(_plain(args))

    def set_verbosity(self, mode: int | str) -> None:
        pass  # the stdlib logger's level decides

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        _checkpoint()
        binding = _current()
        if binding is not None and total_iters > 0:
            binding.on_bytes(cur_iter, total_iters)


def install() -> EsptoolLogRouter:
    """Make the router esptool's logger (idempotent) and return it."""
    with _install_lock:
        current = EspLog.instance
        if isinstance(current, EsptoolLogRouter):
            return current
        router = EsptoolLogRouter()
        EspLog.set_logger(router)
        return router
