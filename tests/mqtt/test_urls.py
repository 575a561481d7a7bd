"""Broker URL lists: parsing, rotation, and never showing a password."""

from __future__ import annotations

import pytest

from broker_agent.errors import SetupError
from broker_agent.mqtt import BrokerUrls


def test_a_comma_separated_list_keeps_its_order() -> None:
    urls = BrokerUrls.parse("mqtt://a:1883, mqtts://b , unix:///run/mqtt.sock")

    assert ["mqtt://a:1883", "mqtts://b:8883", "unix:///run/mqtt.sock"] == [
        url.display() for url in urls.urls
    ]


def test_next_moves_on_and_wraps_around() -> None:
    urls = BrokerUrls.parse("mqtt://a,mqtt://b")

    assert ["b", "a", "b"] == [urls.next().host for _ in range(3)]


def test_display_of_a_list_hides_every_password() -> None:
    urls = BrokerUrls.parse("mqtt://agent:s3cret@a,mqtt://agent:0ther@b")

    assert "mqtt://a:1883, mqtt://b:1883" == urls.display()


def test_the_user_name_comes_from_the_first_url_that_has_one() -> None:
    assert "agent-1" == BrokerUrls.parse("mqtt://a,mqtt://agent-1:pw@b").username


def test_an_empty_entry_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(SetupError, match="empty entry") as caught:
        BrokerUrls.parse("mqtt://u:s3cret@a,,mqtt://b")

    assert "s3cret" not in str(caught.value)


def test_a_bad_url_in_the_list_is_refused_without_its_password() -> None:
    with pytest.raises(SetupError, match="scheme") as caught:
        BrokerUrls.parse("mqtt://a,http://u:s3cret@b")

    assert "s3cret" not in str(caught.value)
