"""What a broker supports, from its CONNACK: defaults, refusals, and the shared-filter choice."""

from __future__ import annotations

import structlog

from broker_agent.mqtt import BrokerCapabilities, shared_filter


def test_a_connack_without_properties_means_everything_is_available() -> None:
    assert BrokerCapabilities() == BrokerCapabilities.from_connack(None)


def test_missing_retain_wildcards_or_qos1_are_each_a_reason_to_refuse() -> None:
    no_retain = BrokerCapabilities(retain=False).required_problem() or ""
    no_wildcards = BrokerCapabilities(wildcard_subscriptions=False).required_problem() or ""
    qos0_only = BrokerCapabilities(maximum_qos=0).required_problem() or ""

    assert "retained messages" in no_retain
    assert "wildcard subscriptions" in no_wildcards
    assert "QoS 0 only" in qos0_only


def test_missing_shared_subscriptions_is_no_reason_to_refuse() -> None:
    assert BrokerCapabilities(shared_subscriptions=False).required_problem() is None


def test_shared_filter_uses_the_group_when_the_broker_has_shared_subscriptions() -> None:
    got = shared_filter(BrokerCapabilities(), "agents", "iot/provision/+/request")

    assert "$share/agents/iot/provision/+/request" == got


def test_without_shared_subscriptions_the_plain_filter_is_used_with_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        got = shared_filter(
            BrokerCapabilities(shared_subscriptions=False), "agents", "iot/provision/+/request"
        )

    assert "iot/provision/+/request" == got
    [warning] = [e for e in logs if e["event"] == "shared_subscriptions_unavailable"]
    assert "only one replica" in warning["consequence"]
