"""A private Mosquitto child process: `broker-agent run` without a broker URL, and the tests.

The project's ``mosquitto.conf`` is the base; the listener and the persistence location are
replaced so the process can run anywhere, on any port, as any user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker_agent.errors import SetupError

INSTALL_HINT = (
    "mosquitto is not installed: install it with `sudo apt-get install mosquitto "
    "mosquitto-clients` (Debian/Ubuntu) or `brew install mosquitto` (macOS), "
    "or pass --broker-url to use an existing broker"
)
_REPLACED = ("listener", "port", "bind_address", "persistence_location", "pid_file", "user")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_config(
    base: str,
    *,
    port: int | None,
    data_dir: Path,
    host: str = "127.0.0.1",
    unix_socket: Path | None = None,
    extra: str = "",
) -> str:
    """The base config with our listener(s), persistence location and user."""
    kept = [line for line in base.splitlines() if line.strip().split(" ", 1)[0] not in _REPLACED]
    lines = [*kept, "", "# -- added by broker-agent --"]
    if port is not None:
        lines.append(f"listener {port} {host}")
    if unix_socket is not None:
        lines.append(f"listener 0 {unix_socket}")
    lines.append(f"persistence_location {data_dir}/")
    if os.geteuid() == 0:
        # As root, mosquitto drops to user `mosquitto` before writing persistence; stay root
        # for a private broker whose files live in our own data directory.
        lines.append("user root")
    return "\n".join(lines) + "\n" + extra


@dataclass
class MosquittoProcess:
    """Start with ``start()``, stop with ``stop()``; or use as a context manager."""

    config_text: str
    data_dir: Path
    port: int | None = None
    host: str = "127.0.0.1"
    unix_socket: Path | None = None
    binary: str = "mosquitto"
    ready_timeout_s: float = 10.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @classmethod
    def from_file(
        cls, conf: Path, data_dir: Path, port: int | None, **kwargs: object
    ) -> MosquittoProcess:
        try:
            base = conf.read_text(encoding="utf-8")
        except OSError as exc:
            raise SetupError(f"cannot read the Mosquitto config {conf}: {exc.strerror}") from exc
        return cls(base, data_dir, port, **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"mqtt://{self.host}:{self.port}"
        assert self.unix_socket is not None
        return f"unix://{self.unix_socket}"

    def start(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise SetupError(INSTALL_HINT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "mosquitto.runtime.conf"
        conf.write_text(
            runtime_config(
                self.config_text,
                port=self.port,
                data_dir=self.data_dir,
                host=self.host,
                unix_socket=self.unix_socket,
            ),
            encoding="utf-8",
        )
        log = (self.data_dir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and config
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                raise SetupError(f"mosquitto exited with code {self.process.returncode}: {tail}")
            if self._accepts():
                return
            time.sleep(0.02)
        self.stop()
        raise SetupError(f"mosquitto did not accept connections within {self.ready_timeout_s} s")

    def _accepts(self) -> bool:
        try:
            if self.port is not None:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            assert self.unix_socket is not None
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                sock.connect(str(self.unix_socket))
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = (self.data_dir / "mosquitto.log").read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return ""

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
