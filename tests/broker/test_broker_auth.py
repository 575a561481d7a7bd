"""Mosquitto's password format, the users taken from the secrets directory, the ACL text.

That a password file written here authenticates with a real Mosquitto is shown by every test in
tests/broker/test_security.py (the broker there reads nothing else).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from broker_agent.broker.acl import render_acl
from broker_agent.broker.auth_sync import (
    FILE_MODE,
    BrokerAuthSettings,
    BrokerAuthSync,
    write_if_changed,
)
from broker_agent.broker.users import (
    PBKDF2_ITERATIONS,
    PasswordFile,
    PasswordHash,
    Refusal,
    RefusalReason,
    ServiceAccounts,
    collect_users,
    parse_password_file,
    password_entries,
)
from broker_agent.errors import SetupError

ACCOUNTS = ServiceAccounts.parse(
    {
        "_comment": "service accounts",
        "agents": {"agent-1": "agent-pw"},
        "stations": {"station-1": "station-pw"},
        "operators": {"operator": "operator-pw"},
    }
)
HASH_LINE = re.compile(r"^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")


def mosquitto_passwd(tmp_path: Path, user: str, password: str, *algorithm: str) -> str:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is missing (apt-get install mosquitto)")
    path = tmp_path / "passwd"
    path.unlink(missing_ok=True)
    subprocess.run(
        ["mosquitto_passwd", *algorithm, "-b", "-c", str(path), user, password], check=True
    )
    return path.read_text().strip()


# -- the password format ------------------------------------------------------------------------
def test_a_new_hash_has_mosquitto_passwds_shape() -> None:
    encoded = PasswordHash.new("s3cret").encode()
    assert HASH_LINE.match(encoded), encoded
    salt = base64.b64decode(encoded.split("$")[3])
    assert (12, PBKDF2_ITERATIONS) == (len(salt), PasswordHash.parse(encoded).iterations)


def test_a_known_vector_matches_pbkdf2_sha512() -> None:
    # independent of our code: hashlib's PBKDF2 over a fixed salt, as mosquitto_passwd computes
    import hashlib

    salt = bytes(range(12))
    expected = base64.b64encode(hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)).decode()
    assert f"$7$101${base64.b64encode(salt).decode()}${expected}" == (
        PasswordHash.new("pw", salt=salt).encode()
    )


@pytest.mark.parametrize("algorithm", [(), ("-H", "sha512-pbkdf2"), ("-H", "sha512")])
def test_lines_written_by_mosquitto_passwd_parse_and_verify(
    tmp_path: Path, algorithm: tuple[str, ...]
) -> None:
    line = mosquitto_passwd(tmp_path, "kitchen-01", "pä$$:word", *algorithm)
    parsed = parse_password_file(line + "\n")
    assert ["kitchen-01"] == list(parsed)
    found = parsed["kitchen-01"]
    assert (True, False) == (found.verify("pä$$:word"), found.verify("pä$$:wore"))
    assert line.split(":", 1)[1] == found.encode()  # re-encodes to the same text


@given(
    salt=st.binary(min_size=1, max_size=32),
    digest=st.binary(min_size=64, max_size=64),
    iterations=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
)
def test_parse_encode_round_trip(salt: bytes, digest: bytes, iterations: int | None) -> None:
    value = PasswordHash(salt, digest, iterations)
    assert value == PasswordHash.parse(value.encode())


@pytest.mark.parametrize(
    "text", ["", "plain", "$7$x$AAAA$AAAA", "$5$abc$def", "$7$101$!!$AAAA", "$6$AAAA$AAAA"]
)
def test_malformed_hashes_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        PasswordHash.parse(text)


def test_parse_password_file_skips_comments_and_bad_lines() -> None:
    good = PasswordHash.new("x").encode()
    text = f"# header\n\nno-colon\nbad:$9$zz\nok:{good}\n"
    assert ["ok"] == list(parse_password_file(text))


def test_rendering_keeps_hashes_while_passwords_stay_the_same() -> None:
    builder = PasswordFile()
    first = builder.render({"b-dev": "1", "a-dev": "2"})
    assert first == builder.render({"a-dev": "2", "b-dev": "1"})
    changed = builder.render({"a-dev": "2", "b-dev": "new"})
    first_lines, changed_lines = first.splitlines(), changed.splitlines()
    assert first_lines[0].startswith("# Generated")
    assert ["a-dev", "b-dev"] == [line.partition(":")[0] for line in first_lines[1:]]
    assert first_lines[:2] == changed_lines[:2]
    assert first_lines[2] != changed_lines[2]
    # a new process adopts the file on disk instead of re-salting everyone
    fresh = PasswordFile()
    fresh.adopt(changed)
    assert changed == fresh.render({"a-dev": "2", "b-dev": "new"})
    fresh_again = PasswordFile()
    fresh_again.adopt(changed)
    assert changed != fresh_again.render({"a-dev": "2", "b-dev": "other"})


@pytest.mark.parametrize("user", ["Upper", "a:b", "a b", "+", "x/y", ""])
def test_user_names_that_could_break_a_line_or_a_pattern_are_refused(user: str) -> None:
    with pytest.raises(ValueError):
        PasswordFile().render({user: "pw"})


# -- service accounts ---------------------------------------------------------------------------
def test_service_accounts_report_every_problem_at_once() -> None:
    with pytest.raises(SetupError) as caught:
        ServiceAccounts.parse(
            {
                "agents": {"agent-1": "pw", "Bad Name": "pw"},
                "stations": {"agent-1": "pw", "station-1": ""},
                "admins": {},
                "operators": ["op"],
            }
        )
    message = str(caught.value)
    for expected in (
        "agents.Bad Name: not a valid identifier",
        "stations.agent-1: also listed under agents",
        "stations.station-1: the password must be a non-empty string",
        "unknown key 'admins'",
        "operators must be an object",
    ):
        assert expected in message
    assert "pw" not in message  # no password is ever quoted


def test_a_missing_service_accounts_file_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="does not exist"):
        ServiceAccounts.load(tmp_path / "_broker_users.json")


# -- devices from the secrets directory ---------------------------------------------------------
def make_fleet(tmp_path: Path, devices: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir()
    config_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text('{"token_url": "t", "base_url": "b"}')
    (secrets_dir / "_broker_users.json").write_text(json.dumps({"agents": {"agent-1": "a"}}))
    for device_id, document in devices.items():
        (secrets_dir / f"{device_id}.json").write_text(json.dumps(document))
    return secrets_dir, config_dir


def test_devices_become_users_named_by_their_device_id(tmp_path: Path) -> None:
    secrets_dir, _ = make_fleet(
        tmp_path,
        {
            "dev-1": {"client_id": "c1", "client_secret": "s1"},
            "dev-2": {"device_key": "dev-2", "client_secret": "s2"},  # = the device_id: fine
            "dev-3": {"client_id": "c3"},  # not issued yet
        },
    )
    (secrets_dir / ".dev-9.json.swp").write_text("{}")
    (secrets_dir / "dev-8.json~").write_text('{"client_secret": "x"}')
    users = collect_users(secrets_dir, ACCOUNTS)
    assert {
        "agent-1": "agent-pw",
        "station-1": "station-pw",
        "operator": "operator-pw",
        "dev-1": "s1",
        "dev-2": "s2",
    } == dict(users.passwords)
    assert (2, 1, ()) == (users.devices, users.without_secret, users.refused)
    assert {"agent-1": "a", "dev-1": "s1", "dev-2": "s2"} == password_entries(
        secrets_dir, secrets_dir / "_broker_users.json"
    )


def test_devices_whose_secrets_provisioning_would_refuse_are_left_out(tmp_path: Path) -> None:
    secrets_dir, _ = make_fleet(
        tmp_path,
        {
            "station-1": {"client_secret": "s"},  # named like a station
            "dev-1": {"device_key": "agent-1", "client_secret": "s"},  # contract 6.6
            "dev-2": {"device_key": "dev-3", "client_secret": "s"},  # contract 6.6
            "dev-7": {"client_secret": 7},
            "dev-9": {"client_secret": "s", "wifi_pasword": "typo"},  # provisioning refuses it
            "dev-ok": {"client_secret": "s"},
        },
    )
    (secrets_dir / "dev-8.json").write_text("{not json")
    users = collect_users(secrets_dir, ACCOUNTS)
    reasons = {(r.device_id, r.reason) for r in users.refused}
    assert {
        ("station-1", RefusalReason.KEY_IS_A_SERVICE_ACCOUNT),
        ("dev-1", RefusalReason.DEVICE_KEY_MISMATCH),
        ("dev-2", RefusalReason.DEVICE_KEY_MISMATCH),
        ("dev-7", RefusalReason.SECRETS_INVALID),
        ("dev-8", RefusalReason.SECRETS_UNREADABLE),
        ("dev-9", RefusalReason.SECRETS_INVALID),
    } == reasons
    assert {"agent-1", "station-1", "operator", "dev-ok"} == set(users.passwords)
    assert "agent-pw" == users.passwords["agent-1"]  # the service account, not the device


def test_a_missing_secrets_directory_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="secrets directory"):
        collect_users(tmp_path / "nope", ACCOUNTS)


# -- the ACL ------------------------------------------------------------------------------------
def acl_blocks(text: str) -> dict[str, list[str]]:
    """``{"": [patterns...], "<user>": [rules...]}`` from an ACL file, comments dropped."""
    blocks: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            current = line.split(" ", 1)[1]
            blocks[current] = []
        else:
            blocks[current].append(line)
    return blocks


def test_acl_rules_per_role_under_a_custom_root() -> None:
    blocks = acl_blocks(render_acl("fleet/eu", ACCOUNTS))
    assert {
        "": [
            "pattern read fleet/eu/devices/%u/config",
            "pattern write fleet/eu/devices/%u/config/applied",
            "pattern write fleet/eu/devices/%u/status",
        ],
        "agent-1": [
            "topic readwrite fleet/eu/agents/agent-1/#",
            "topic readwrite fleet/eu/devices/+/config",
            "topic readwrite fleet/eu/devices/+/config/applied",
            "topic read fleet/eu/devices/+/status",
            "topic readwrite fleet/eu/devices/+/config/set",
            "topic write fleet/eu/devices/+/config/set/response/#",
            "topic readwrite fleet/eu/provision/+/request",
            "topic write fleet/eu/provision/+/response/#",
        ],
        "station-1": [
            "topic deny fleet/eu/devices/#",
            "topic readwrite fleet/eu/stations/station-1/#",
            "topic write fleet/eu/provision/+/request",
            "topic read fleet/eu/provision/+/response/station-1/#",
            "topic read fleet/eu/agents/+/status",
        ],
        "operator": [
            "topic deny fleet/eu/devices/operator/#",
            "topic deny fleet/eu/provision/#",
            "topic read fleet/eu/devices/+/config",
            "topic read fleet/eu/devices/+/config/applied",
            "topic read fleet/eu/devices/+/status",
            "topic write fleet/eu/devices/+/config/set",
            "topic read fleet/eu/devices/+/config/set/response/#",
            "topic readwrite fleet/eu/operators/operator/#",
            "topic read fleet/eu/agents/+/status",
            "topic read fleet/eu/agents/+/events",
            "topic read fleet/eu/agents/+/fleet",
            "topic read fleet/eu/stations/+/status",
            "topic write fleet/eu/stations/+/flash/request",
            "topic write fleet/eu/stations/+/flash/cancel",
            "topic read fleet/eu/stations/+/flash/response/#",
            "topic read $SYS/#",
        ],
    } == blocks


def test_acl_refuses_a_bad_root() -> None:
    with pytest.raises(ValueError):
        render_acl("iot/#", ACCOUNTS)


# -- files and the sync (no broker: no pid, so no signal) ---------------------------------------
def test_write_if_changed_rewrites_only_on_a_difference(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "acl"
    assert write_if_changed(path, "a\n")
    inode = path.stat().st_ino
    assert not write_if_changed(path, "a\n")
    assert (inode, FILE_MODE) == (path.stat().st_ino, path.stat().st_mode & 0o777)
    path.chmod(0o644)
    assert write_if_changed(path, "a\n")  # a wrong mode is repaired
    assert write_if_changed(path, "b\n")
    assert ("b\n", FILE_MODE) == (path.read_text(), path.stat().st_mode & 0o777)


def test_sync_writes_both_files_and_never_logs_a_secret(tmp_path: Path) -> None:
    secrets_dir, config_dir = make_fleet(
        tmp_path,
        {
            "dev-1": {"client_secret": "device-secret-1"},
            "agent-1": {"client_secret": "device-secret-2"},  # refused: logged by id only
        },
    )
    auth = BrokerAuthSettings(
        secrets_dir, config_dir, tmp_path / "a" / "passwd", tmp_path / "a" / "acl"
    )
    sync = BrokerAuthSync(auth)
    with structlog.testing.capture_logs() as logs:
        first = sync.sync_blocking()
        second = sync.sync_blocking()
    assert (True, False, False) == (first.changed, first.reloaded, second.changed)
    assert {"agent-1", "dev-1"} == set(parse_password_file(auth.passwd_file.read_text()))
    assert "user agent-1" in auth.acl_file.read_text()
    assert [Refusal("agent-1", RefusalReason.KEY_IS_A_SERVICE_ACCOUNT, "agent agent-1")] == list(
        first.users.refused if first.users else []
    )
    events = [entry["event"] for entry in logs]
    assert 1 == events.count("broker_device_refused")  # once, not on every sync
    assert "broker_reload_needed" in events
    text = repr(logs)
    for secret in ("device-secret-1", "device-secret-2", '"a"', "'a'"):
        assert secret not in text


def test_sync_keeps_the_files_when_the_service_accounts_are_broken(tmp_path: Path) -> None:
    secrets_dir, config_dir = make_fleet(tmp_path, {"dev-1": {"client_secret": "s"}})
    auth = BrokerAuthSettings(secrets_dir, config_dir, tmp_path / "passwd", tmp_path / "acl")
    sync = BrokerAuthSync(auth)
    assert sync.sync_blocking().changed
    before = auth.passwd_file.read_text()
    (secrets_dir / "_broker_users.json").write_text('{"agents": {"agent-1": ""}}')
    result = sync.sync_blocking()
    assert (False, before) == (result.changed, auth.passwd_file.read_text())
    assert result.error is not None and "non-empty" in result.error


def test_a_pid_file_naming_another_process_is_never_signalled(tmp_path: Path) -> None:
    """SIGHUP ends most processes: a pid from another PID namespace must not get one."""
    secrets_dir, config_dir = make_fleet(tmp_path, {"dev-1": {"client_secret": "s"}})
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{sleeper.pid}\n")
        auth = BrokerAuthSettings(
            secrets_dir, config_dir, tmp_path / "passwd", tmp_path / "acl", pid_file=pid_file
        )
        with structlog.testing.capture_logs() as logs:
            result = BrokerAuthSync(auth).sync_blocking()
        assert (True, False, None) == (result.changed, result.reloaded, sleeper.poll())
        reasons = [
            entry.get("reason", "") for entry in logs if entry["event"] == "broker_reload_failed"
        ]
        assert [f"pid {sleeper.pid} is 'sleep', not mosquitto"] == reasons
    finally:
        sleeper.kill()
        sleeper.wait()


def test_provisioners_must_be_listed_operators() -> None:
    document = {"operators": {"console-1": "pw"}, "provisioners": ["console-1", "ghost"]}
    with pytest.raises(SetupError, match="ghost not listed under operators"):
        ServiceAccounts.parse(document)


def test_only_a_provisioner_may_request_images() -> None:
    accounts = ServiceAccounts.parse(
        {"operators": {"console-1": "a", "viewer": "b"}, "provisioners": ["console-1"]}
    )
    acl = acl_blocks(render_acl("iot", accounts))
    assert "topic write iot/provision/+/request" in acl["console-1"]
    assert "topic read iot/provision/+/response/console-1/#" in acl["console-1"]
    assert "topic deny iot/provision/#" in acl["viewer"]
    assert not any("provision/+/request" in line for line in acl["viewer"])
