"""Provisioning's side of the shared request intake (mqtt/intake.py): a full queue answers
"busy, retry" at once instead of queueing without bound."""

from __future__ import annotations

import pytest
import structlog

from broker_agent.provisioning import responder
from tests.support.agent import running_agent
from tests.support.provisioning import Fleet, error_of, requester

pytestmark = pytest.mark.timeout(60)


@pytest.mark.allow_contract_violations  # requests answered internal_error on purpose
async def test_requests_past_a_full_queue_are_answered_busy_retry_with_one_warning(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responder, "QUEUE_CAPACITY", 1)
    count = 60
    with structlog.testing.capture_logs() as logs:
        async with (
            running_agent(fleet.settings(publish_concurrency=1)),
            requester(fleet.broker) as station,
        ):
            for index in range(count):
                await station.send(
                    "kitchen-01", {"request_id": f"r-{index}", "partition_size": 0x5000}
                )
            replies = await station.wait(count)

    busy = [error_of(r) for r in replies if r.document["status"] == "error"]
    assert busy, "a burst of 60 requests into a queue of 1 got no busy answer"
    assert {"internal_error"} == {code.value for _, code, _ in busy}
    assert all("retry" in message for _, _, message in busy)
    assert count == len({r.document["request_id"] for r in replies})  # each answered once
    assert 1 == sum(e["event"] == "provision_busy" for e in logs)  # one burst, one warning
