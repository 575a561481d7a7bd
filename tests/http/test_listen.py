"""Parsing BROKER_AGENT_HTTP_LISTEN: what is accepted, and one clear line for what is not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_agent.errors import SetupError
from broker_agent.http.listen import ListenAddress, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ListenAddress("127.0.0.1", 8080)),
        ("0.0.0.0:8081", ListenAddress("0.0.0.0", 8081)),
        ("localhost:0", ListenAddress("localhost", 0)),
        ("metrics.example.org:9100", ListenAddress("metrics.example.org", 9100)),
        ("[::1]:8080", ListenAddress("::1", 8080)),
        ("[::]:65535", ListenAddress("::", 65535)),
        ("  127.0.0.1:8080\n", ListenAddress("127.0.0.1", 8080)),
    ],
)
def test_accepted_forms(text: str, expected: ListenAddress) -> None:
    assert expected == parse_listen(text)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_means_off(text: str) -> None:
    assert parse_listen(text) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8080", "no port"),
        (":8080", "no host"),
        ("::1:8080", "goes in brackets"),
        ("[::1]8080", "needs ']:'"),
        ("[127.0.0.1]:80", "not an IPv6 address"),
        ("127.0.0.1:65536", "not a number from 0 to 65535"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:\uff18\uff10", "not a number"),  # full-width digits: isdigit() is True
        ("http://127.0.0.1:8080", "without a scheme"),
        ("my host:80", "not an IPv4 address or a host name"),
    ],
)
def test_refusals_name_the_value_and_the_reason_on_one_line(text: str, why: str) -> None:
    with pytest.raises(SetupError) as caught:
        parse_listen(text)
    message = str(caught.value)
    assert why in message
    assert repr(text) in message
    assert "\n" not in message


@given(st.text(max_size=40))
def test_any_text_is_an_address_off_or_a_setup_error(text: str) -> None:
    try:
        parsed = parse_listen(text)
    except SetupError:
        return
    assert parsed is None or 0 <= parsed.port <= 65535


@given(st.ip_addresses(), st.integers(0, 65535))
def test_an_ip_and_port_round_trip_through_str(ip: object, port: int) -> None:
    address = ListenAddress(str(ip), port)
    assert address == parse_listen(str(address))
