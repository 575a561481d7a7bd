"""The request intake's background work ends with its session (mqtt/intake.py).

Clearing a retained request with an invalid device id used to run as a task of its own,
outside every TaskGroup: nothing cancelled it at a reconnect or a shutdown, and nothing
awaited it.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from broker_agent.mqtt import Connection, Message, make_connection
from broker_agent.mqtt.intake import Request, RequestIntake
from broker_agent.settings import MqttSettings
from tests.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.timeout(30)


class SessionEnded(Exception):
    pass


async def ignore(connection: Connection, request: Request) -> None:
    del connection, request


async def test_a_retained_request_being_cleared_ends_with_its_session(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    intake = RequestIntake(
        "provision",
        "iot/provision/+/request",
        None,
        subscription_ids=(1, 2),
        capacity=10,
        topic_prefix="iot/provision/",
    )
    invalid = Message("iot/provision/NOT VALID/request", b"{}", qos=1, retain=True)

    async with make_connection(MqttSettings(), broker.url, client_id="t-intake") as connection:
        with pytest.raises(ExceptionGroup):
            async with asyncio.TaskGroup() as group:
                await intake.start(connection, group, 1, ignore, ignore)
                broker.process.send_signal(signal.SIGSTOP)  # no PUBACK: the clear hangs
                assert intake.clear_invalid(invalid)
                await asyncio.sleep(0)  # the clear has sent its PUBLISH
                raise SessionEnded
        left = [t for t in asyncio.all_tasks() if t.get_name() == "clear-retained-request"]
        broker.process.send_signal(signal.SIGCONT)

    assert [] == left
