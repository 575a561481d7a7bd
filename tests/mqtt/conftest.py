"""Extra Mosquitto processes for the MQTT layer's tests: configured without some feature."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_agent.broker.process import free_port


@dataclass
class PlainBroker:
    """A Mosquitto whose options follow its one listener line.

    ``MosquittoProcess`` appends the listener after the base config, which leaves listener
    options such as ``max_qos`` on the unused default listener (measured: the CONNACK then
    announced no Maximum QoS); here the listener comes first.
    """

    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


MakeBroker = Callable[..., PlainBroker]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[MakeBroker]:
    """``make_broker("retain_available false")``: a started Mosquitto with those lines."""
    started: list[PlainBroker] = []

    def make(*lines: str) -> PlainBroker:
        port = free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        head = [f"listener {port} 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true"]
        if os.geteuid() == 0:
            head.append("user root")
        conf.write_text("\n".join([*head, *lines]) + "\n")
        log = (tmp_path / f"mosquitto-{port}.log").open("ab")
        process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        broker = PlainBroker(f"mqtt://127.0.0.1:{port}", process)
        started.append(broker)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return broker
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start with {lines}") from None
                time.sleep(0.02)

    yield make
    for broker in started:
        broker.stop()
