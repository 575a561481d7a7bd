"""The snapshot reader (mqtt/retained.py) reads its SUBACKs: a filter the broker's ACL refuses
is an error naming it, never a silently partial snapshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from broker_agent.cli import main
from broker_agent.mqtt import SubscriptionRefusedError
from broker_agent.mqtt.retained import read_retained
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker
from tests.mqtt.conftest import make_broker as make_broker  # the fixture, reused
from tests.support.mqtt import client_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="needs mosquitto_ctrl"),
]

REFUSED = "iot/devices/+/config/applied"


def acl_broker_lines(tmp_path: Path) -> list[str]:
    """Mosquitto with the dynamic security plugin: anonymous clients may publish anything and
    subscribe to device configs, statuses and operator topics, but not to acks (SUBACK 0x80
    on MQTT 3.1.1; an acl_file denial would be granted and deliver nothing instead)."""
    config = tmp_path / "dynsec.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(config), "admin", "admin-pw"],
        check=True,
        capture_output=True,
    )
    document = json.loads(config.read_text())
    document["defaultACLAccess"]["subscribe"] = False
    acls = [
        {"acltype": "subscribeLiteral", "topic": "iot/devices/+/config", "allow": True},
        {"acltype": "subscribeLiteral", "topic": "iot/devices/+/status", "allow": True},
        {"acltype": "subscribePattern", "topic": "iot/operators/#", "allow": True},
        {"acltype": "subscribeLiteral", "topic": "test/marker", "allow": True},
        {"acltype": "publishClientSend", "topic": "#", "allow": True},
    ]
    document.setdefault("roles", []).append({"rolename": "reader", "acls": acls})
    document.setdefault("groups", []).append(
        {"groupname": "anonymous", "roles": [{"rolename": "reader"}]}
    )
    document["anonymousGroup"] = "anonymous"
    config.write_text(json.dumps(document))
    plugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
    return [f"plugin {plugin}", f"plugin_opt_config_file {config}"]


async def test_a_refused_filter_raises_naming_it(make_broker: MakeBroker, tmp_path: Path) -> None:
    broker = make_broker(*acl_broker_lines(tmp_path))
    async with client_for(broker.url) as client:
        await client.publish("iot/devices/d-1/status", b'{"state":"online"}', qos=1, retain=True)
    seen: dict[str, bytes] = {}

    with pytest.raises(SubscriptionRefusedError) as caught:
        await read_retained(
            MqttSettings(),
            broker.url,
            ["iot/devices/+/status", REFUSED],
            seen.__setitem__,
            client_id="snap",
            marker_topic="test/marker",
        )

    assert (REFUSED, 0x80) == (caught.value.topic_filter, caught.value.code)


def test_status_exits_2_with_one_line_naming_the_refused_filter(
    make_broker: MakeBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker(*acl_broker_lines(tmp_path))

    code = main(["status", "--broker-url", broker.url])

    err = capsys.readouterr().err
    assert 2 == code
    assert f"the broker refused the subscription to {REFUSED}" in err
