"""``unix://`` broker URLs (contract section 5): the agent over a Mosquitto unix-socket listener.

paho 2.2 refuses port 0 even for ``transport="unix"`` (``ValueError("Invalid port number.")``,
measured), which is what a ``unix://`` URL used to carry: the agent died at its first connect.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_agent.broker.process import MosquittoProcess
from broker_agent.errors import SetupError
from broker_agent.mqtt import BrokerUrl, BrokerUrls, make_connection
from broker_agent.mqtt.retained import read_retained
from broker_agent.settings import MqttSettings
from firmware_contracts.topics import Topics
from tests.support.agent import agent_settings, running_agent

pytestmark = pytest.mark.timeout(60)

TOPICS = Topics("iot")


@pytest.fixture
def unix_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto whose only listener is ``listener 0 <socket>`` (no TCP port at all)."""
    # a socket path must fit sockaddr_un (108 bytes); pytest's tmp_path may not
    with tempfile.TemporaryDirectory(prefix="ba-sock-", dir="/tmp") as short:
        broker = MosquittoProcess(
            "allow_anonymous true\n",
            tmp_path / "mosquitto",
            port=None,
            unix_socket=Path(short) / "mqtt.sock",
        )
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


async def test_an_agent_on_a_unix_socket_url_publishes_the_configs(
    unix_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "kitchen-01.json").write_text(json.dumps({"led": True}))
    url = unix_broker.url
    assert url.startswith("unix:///")

    async with running_agent(agent_settings(url, config_dir)):
        seen: dict[str, bytes] = {}
        await read_retained(
            MqttSettings(),
            url,
            [TOPICS.device_config("kitchen-01")],
            seen.__setitem__,
            client_id="t-unix-reader",
            marker_topic="test/unix-marker",
        )

    envelope = json.loads(seen[TOPICS.device_config("kitchen-01")])
    assert {"led": True} == envelope["config"]


async def test_a_url_the_client_library_rejects_is_a_setup_error(
    unix_broker: MosquittoProcess,
) -> None:
    refused = BrokerUrls((BrokerUrl("unix", "", 0, path=str(unix_broker.unix_socket)),))

    with pytest.raises(SetupError, match="Invalid port number"):
        async with make_connection(MqttSettings(), refused, client_id="t-bad-port"):
            pass
