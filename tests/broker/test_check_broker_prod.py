"""``check-broker`` on the production profile (mosquitto.prod.conf: use_username_as_clientid).

There, a second connection of one account closes the first; the checks that hold two
connections at once used to report false failures (retained read-back "publish failed",
shared subscriptions, the will "no will within 10 s").
"""

from __future__ import annotations

import pytest

from broker_agent.commands.check_broker import TWO_CONNECTIONS, BrokerCheck
from tests.support.secure_broker import SecureBroker

pytestmark = pytest.mark.timeout(60)


async def test_client_ids_bound_to_user_names_are_one_line_not_false_failures(
    secure_broker: SecureBroker,
) -> None:
    url = f"mqtt://127.0.0.1:{secure_broker.plain_port}"
    prefix = "iot/agents/test-agent/check-broker/t"  # the agent account may write there
    check = BrokerCheck(secure_broker.settings("test-agent"), [url], prefix, wait_s=1.0)

    verdicts = {verdict.name: verdict.status for verdict in await check.run()}

    assert "missing" == verdicts[TWO_CONNECTIONS]
    assert [] == [name for name, status in verdicts.items() if status == "failed"]
    skipped = {name for name, status in verdicts.items() if status == "skipped"}
    assert {"retained read-back, 1,001 via +", "shared subscriptions", "will"} == skipped
