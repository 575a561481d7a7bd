"""The project's exceptions, grouped by what the caller does about them.

    BrokerAgentError
    ├── SetupError            stop with a one-line message (bad settings, mosquitto missing)
    ├── BrokerUnavailableError back off and reconnect
    ├── ConfigFileError       reject one config file (event ``config_rejected``), keep running
    ├── ProvisionFailure      answer one provisioning request with an error code
    └── FlashJobError         end one flash job with an ``error`` event

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
    def __init__(self, code: ConfigErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProvisionFailure(BrokerAgentError):
    def __init__(self, code: ProvisionErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FlashJobError(BrokerAgentError):
    def __init__(
        self,
        code: FlashErrorCode,
        message: str,
        phase: FlashPhase,
        cause: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.phase = phase
        self.cause = cause

    def __repr__(self) -> str:
        return f"FlashJobError({self.code.value!r}, {self.message!r}, phase={self.phase.value!r})"
