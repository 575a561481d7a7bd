"""The bridge sections and the central ACL, rendered without a broker (broker/bridge.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from broker_agent.broker.bridge import (
    CentralBroker,
    Direction,
    Link,
    SiteBridge,
    bridge_topics,
    filters_overlap,
    render_bridge,
    render_central_acl,
)
from broker_agent.cli import main
from firmware_contracts.identifiers import InvalidIdentifierError
from firmware_contracts.topics import Topics

T = Topics("iot")
CENTRAL = CentralBroker("central.example.com", 8883, tls=True)
SAMPLE = {  # one concrete topic per contract family, and where it must go
    T.device_config("d-1"): Direction.IN,
    T.device_config_applied("d-1"): Direction.OUT,
    T.device_status("d-1"): Direction.OUT,
    T.config_set("d-1"): Direction.OUT,
    T.config_set_response("d-1") + "/op/n1": Direction.IN,
    T.agent_status("agent-1"): Direction.IN,
    T.provision_request("d-1"): Direction.OUT,
    T.provision_response("d-1") + "/bench-1/n1": Direction.IN,
    T.station_status("bench-1"): Direction.OUT,
    T.flash_request("bench-1"): Direction.IN,
    T.flash_cancel("bench-1"): Direction.IN,
    T.flash_response("bench-1"): Direction.OUT,
    T.flash_response("bench-1") + "/op/n1": Direction.OUT,
}


def directions(topic: str, stations: tuple[str, ...] = ()) -> set[Direction]:
    return {
        t.direction for t in bridge_topics("iot", stations) if filters_overlap(t.pattern, topic)
    }


@pytest.mark.parametrize(("topic", "direction"), sorted(SAMPLE.items()))
def test_every_contract_topic_family_crosses_in_one_direction(
    topic: str, direction: Direction
) -> None:
    assert {direction} == directions(topic)


@pytest.mark.parametrize(
    "topic", [T.agent_events("agent-1"), T.agent_fleet("agent-1"), T.agent_sync("agent-1")]
)
def test_agent_only_topics_stay_central(topic: str) -> None:
    assert set() == directions(topic)


def test_no_in_filter_overlaps_an_out_filter() -> None:
    topics = bridge_topics("iot")
    ins = [t.pattern for t in topics if t.direction is Direction.IN]
    outs = [t.pattern for t in topics if t.direction is Direction.OUT]
    assert [] == [(i, o) for i in ins for o in outs if filters_overlap(i, o)]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
        ("a/b/#", "a/+/c/d", True),
        ("a/+/c", "a/+/c/d", False),
        ("a/b", "a/c", False),
        ("a/+/config", "a/+/config/set", False),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert (overlap, overlap) == (filters_overlap(a, b), filters_overlap(b, a))


def test_stations_scope_station_topics_and_their_images() -> None:
    assert set() == directions(T.flash_request("bench-9"), ("bench-1",))
    assert set() == directions(T.provision_response("d-1") + "/bench-9/n1", ("bench-1",))
    assert {Direction.IN} == directions(T.flash_request("bench-1"), ("bench-1",))


def test_configs_ride_a_persistent_311_link_and_requests_a_v5_link() -> None:
    text = render_bridge(SiteBridge("site-a", CENTRAL))
    configs, requests = text.split("\nconnection ")[1:]
    assert configs.startswith("site-a-configs\n")
    assert "bridge_protocol_version mqttv311" in configs
    assert "\ncleansession false" in configs
    assert "topic iot/devices/+/config in 1" in configs
    assert "bridge_protocol_version mqttv50" in requests
    assert "topic iot/provision/+/request out 1" in requests


def test_topic_root_prefixes_every_pattern() -> None:
    text = render_bridge(SiteBridge("site-a", CENTRAL, topic_root="fleet/eu"))
    patterns = [line.split()[1] for line in text.splitlines() if line.startswith("topic ")]
    assert patterns
    assert all(p.startswith("fleet/eu/") for p in patterns)


def test_password_is_a_placeholder_unless_asked() -> None:
    bridge = SiteBridge("site-a", CENTRAL, username="bridge-a", password="s3cret-pw")
    assert "s3cret-pw" not in render_bridge(bridge)
    assert "s3cret-pw" not in repr(bridge)
    assert "remote_password s3cret-pw" in render_bridge(bridge, include_password=True)


def test_remote_clientids_are_the_user_names() -> None:
    text = render_bridge(SiteBridge("site-a", CENTRAL, username="bridge-a", password="pw"))
    assert ["bridge-a", "bridge-a-rr"] == [
        line.split()[1] for line in text.splitlines() if line.startswith("remote_clientid")
    ]
    assert ["bridge-a", "bridge-a-rr"] == [
        line.split()[1] for line in text.splitlines() if line.startswith("remote_username")
    ]


def test_mqtts_gets_verified_tls_with_the_cafile(tmp_path: Path) -> None:
    text = render_bridge(SiteBridge("site-a", CENTRAL, cafile=tmp_path / "ca.crt"))
    assert 2 == text.count(f"bridge_cafile {tmp_path / 'ca.crt'}")
    assert 2 == text.count("bridge_insecure false")


def test_plain_mqtt_gets_no_tls_options() -> None:
    text = render_bridge(SiteBridge("site-a", CentralBroker("10.0.0.5", 1883)))
    assert "address 10.0.0.5:1883" in text
    assert "bridge_ca" not in text


def test_central_acl_reads_what_comes_in_and_writes_what_goes_out() -> None:
    acl = render_central_acl(SiteBridge("site-a", CENTRAL, username="bridge-a"))
    configs, requests = acl.split("\nuser ")[1:]
    assert configs.startswith("bridge-a\n")
    assert "topic read iot/devices/+/config\n" in configs
    assert "topic write iot/devices/+/config/applied\n" in configs
    assert "topic write $SYS/broker/connection/bridge-a/state" in configs
    assert requests.startswith("bridge-a-rr\n")
    assert "topic write iot/provision/+/request\n" in requests
    assert "topic read iot/provision/+/response/+/#\n" in requests


def test_an_invalid_site_name_is_refused() -> None:
    with pytest.raises(InvalidIdentifierError):
        SiteBridge("Site A", CENTRAL)


def test_a_password_without_a_user_name_is_refused() -> None:
    with pytest.raises(ValueError, match="user name"):
        SiteBridge("site-a", CENTRAL, password="pw")


def test_links_are_configs_and_requests() -> None:
    assert {Link.CONFIGS, Link.REQUESTS} == {t.link for t in bridge_topics("iot")}


# -- the command -------------------------------------------------------------------------------
def cli(tmp_path: Path, *extra: str) -> list[str]:
    password = tmp_path / "bridge-password"
    password.write_text("s3cret-pw\n")
    return [
        "bridge-config",
        "--site",
        "site-a",
        "--central",
        "mqtts://central.example.com",
        "--username",
        "bridge-a",
        "--password-file",
        str(password),
        *extra,
    ]


def test_command_prints_no_password_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == main(cli(tmp_path))
    out = capsys.readouterr()
    assert "connection site-a-configs" in out.out
    assert "s3cret-pw" not in out.out + out.err


def test_command_writes_the_password_only_into_a_private_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bridge.conf"
    assert 0 == main(cli(tmp_path, "-o", str(target)))
    assert "remote_password s3cret-pw" in target.read_text()
    assert 0o600 == stat.S_IMODE(target.stat().st_mode)
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err


def test_command_refuses_a_password_in_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bridge-config", "--site", "a", "--central", "mqtt://u:hunter2@central"]
    assert 2 == main(args)
    err = capsys.readouterr().err
    assert "--password-file" in err
    assert "hunter2" not in err


def test_command_prints_the_central_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == main(cli(tmp_path, "--central-acl"))
    assert "user bridge-a-rr" in capsys.readouterr().out


def test_command_prints_the_password_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == main(cli(tmp_path, "--show-password"))
    assert 2 == capsys.readouterr().out.count("remote_password s3cret-pw\n")


def test_restart_timeout_is_rendered_on_both_links() -> None:
    text = render_bridge(SiteBridge("site-a", CENTRAL, restart_timeout=(1,)))
    assert 2 == text.count("\nrestart_timeout 1\n")
