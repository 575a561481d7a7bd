"""The project's exceptions, grouped by what the caller does about them.

    BrokerAgentError
    ├── SetupError            stop with a one-line message (bad settings, mosquitto missing)
    ├── BrokerUnavailableError back off and reconnect
    ├── ConfigFileError       reject one config file (event ``config_rejected``), keep running
    ├── RefusedFile           skip one operator file (``files.read_regular_file``), keep running
    │   ├── UnreadableFile    not a regular file inside its directory: FIFO, socket, device,
    │   │                     directory, dangling symlink, symlink to outside, no permission
    │   └── FileTooLarge      over the reader's byte limit
    ├── ProvisionFailure      answer one provisioning request with an error code
    │   └── ProvisionTimeout  the requester's side: no agent answered in time
    └── FlashJobError         refuse a flash command or end a flash job with an ``error`` event

One refusal type per capability: each carries the contract's code and a message, plus what
its answer needs (the file, the request_id, the job's device and port).

Third-party exceptions (aiomqtt, esptool, serial, OS errors) are translated into these once,
at the edge that calls the library. Messages never carry secret values.
"""

from __future__ import annotations

from typing import Any

from firmware_contracts.codes import (
    ConfigErrorCode,
    FlashErrorCode,
    FlashPhase,
    ProvisionErrorCode,
)


class BrokerAgentError(Exception):
    """Base of every error this project raises on purpose."""


class SetupError(BrokerAgentError):
    """The process cannot start as configured; the message says how to fix it."""


class BrokerUnavailableError(BrokerAgentError):
    """The MQTT broker cannot be reached right now."""


class ConfigFileError(BrokerAgentError):
    """One config file refused; ``file``/``device_id`` are set once the file is known."""

    def __init__(
        self,
        code: ConfigErrorCode,
        message: str,
        *,
        file: str | None = None,
        device_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.file = file
        self.device_id = device_id


class RefusedFile(BrokerAgentError):
    """An operator's file that is not read; ``reason`` is a short phrase ("is a FIFO")."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


class UnreadableFile(RefusedFile):
    """Not a regular file we may read (see ``broker_agent.files.read_regular_file``)."""


class FileTooLarge(RefusedFile):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(path, f"is {size} bytes, over the limit of {limit}")
        self.size = size
        self.limit = limit


class ProvisionFailure(BrokerAgentError):
    """One provisioning request refused; ``request_id`` is the one to answer with, if known."""

    def __init__(
        self, code: ProvisionErrorCode, message: str, *, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self.message!r})"


class ProvisionTimeout(ProvisionFailure):
    """No agent answered in time (``internal_error`` on the wire; the CLI prints a timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(ProvisionErrorCode.INTERNAL_ERROR, message)


class FlashJobError(BrokerAgentError):
    def __init__(
        self,
        code: FlashErrorCode,
        message: str,
        phase: FlashPhase = FlashPhase.CONNECTING,
        cause: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.phase = phase
        self.cause = cause
        self.request_id = request_id  # a refused command's, when it had a valid one
        self.device_id: str | None = None  # set once the command is known to be valid
        self.port: str | None = None

    def __repr__(self) -> str:
        return f"FlashJobError({self.code.value!r}, {self.message!r}, phase={self.phase.value!r})"
