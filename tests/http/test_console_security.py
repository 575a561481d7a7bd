"""The console's security rules, over real HTTP: no secret in any answer, login and CSRF
enforced off loopback, login rate-limited, a device's account refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from broker_agent.errors import SetupError
from broker_agent.http.console.auth import FAILURES_PER_ADDRESS, hash_password
from broker_agent.settings import ConsoleSettings
from tests.http.console_harness import CLIENT_SECRET, DEVICES, WIFI_PASSWORD, console_fleet
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse battery staple"
FORBIDDEN = (CLIENT_SECRET, WIFI_PASSWORD)


def leaks(text: str) -> list[str]:
    """Any secret in ``text``, plain or base64 (at each of the three alignments)."""
    found = []
    for secret in FORBIDDEN:
        encodings = [secret]
        for pad in range(3):
            encoded = base64.b64encode(b"x" * pad + secret.encode()).decode()
            encodings.append(encoded[4 if pad else 0 : -4])
        found += [secret for form in encodings if form in text]
    return found


async def test_no_page_or_api_answer_holds_a_secret(broker: Broker, tmp_path: Path) -> None:
    async with console_fleet(broker.url, tmp_path, simulate=1) as fleet:
        http = fleet.http
        job = await http.post(
            "/api/stations/bench-1/jobs", json={"device_id": "kitchen-01"}, headers=fleet.headers()
        )
        paths = [
            "/",
            "/console/",
            "/console/login",
            "/console/stations",
            "/console/events",
            "/api/devices",
            "/api/stations",
            "/api/events/recent",
            "/api/session",
            "/api/openapi.json",
            "/api/docs",
            "/metrics",
            "/healthz",
            "/readyz",
            f"/api/jobs/{job.json()['request_id']}",
            *(f"/api/devices/{d}" for d in DEVICES),
            *(f"/console/devices/{d}" for d in DEVICES),
            *(
                f"/console/static/{name}"
                for name in ("common.js", "fleet.js", "device.js", "stations.js", "events.js")
            ),
        ]
        answers = {path: await http.get(path, follow_redirects=True) for path in paths}
        async with http.stream("GET", "/api/events") as stream:
            lines = stream.aiter_lines()
            first_lines = [await anext(lines) for _ in range(2)]
        image = await http.get(
            "/api/devices/kitchen-01/provisioning", params={"partition_size": 20480}
        )
    assert {path: 200 for path in paths} == {p: r.status_code for p, r in answers.items()}
    assert {} == {path: leaks(r.text) for path, r in answers.items() if leaks(r.text)}
    assert [] == leaks("\n".join(first_lines))
    # the one deliberate exception: the NVS image is the device's credentials, as the old
    # system's endpoint answered them; it is never cached (and needs a login off loopback)
    assert CLIENT_SECRET.encode() in base64.b64decode(image.json()["data"])
    assert "no-store" == image.headers["Cache-Control"]


def test_off_loopback_the_console_refuses_to_start_without_a_login() -> None:
    from broker_agent.http.console.auth import Gate
    from broker_agent.http.listen import parse_listen

    for listen in ("0.0.0.0:8080", "192.0.2.2:8080", "[::]:8080", "fleet.example:8080"):
        address = parse_listen(listen)
        assert address is not None
        with pytest.raises(SetupError, match="needs an operator login"):
            Gate("operator", None, address)
    loopback = parse_listen("127.0.0.2:8080")
    assert loopback is not None
    assert not Gate("operator", None, loopback).login_required


async def test_off_loopback_login_csrf_and_rate_limit_are_enforced(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_PASSWORD_HASH", hash_password(PASSWORD))
    async with console_fleet(
        broker.url, tmp_path, listen="0.0.0.0:0", login=("operator", PASSWORD)
    ) as fleet:
        base = fleet.url
        async with httpx.AsyncClient(base_url=base, timeout=10) as stranger:
            page = await stranger.get("/console/")
            api = await stranger.get("/api/devices")
            stream = await stranger.get("/api/events")
            write = await stranger.put(
                "/api/devices/kitchen-01/config", json={"telemetry_interval_s": 9}
            )
            device_logins = [
                await stranger.post("/api/login", json={"username": u, "password": CLIENT_SECRET})
                for u in ("kitchen-01", "kitchen-01-client")
            ]
            wrong = [
                await stranger.post(
                    "/api/login", json={"username": "operator", "password": f"guess-{n}"}
                )
                for n in range(FAILURES_PER_ADDRESS - 2)
            ]
            limited = await stranger.post(
                "/api/login", json={"username": "operator", "password": PASSWORD}
            )
        logged_in = await fleet.http.get("/api/devices")
        no_token = await fleet.http.put(
            "/api/devices/kitchen-01/config", json={"telemetry_interval_s": 9}
        )
        wrong_token = await fleet.http.put(
            "/api/devices/kitchen-01/config",
            json={"telemetry_interval_s": 9},
            headers={"X-CSRF-Token": "not-the-token"},
        )
        with_token = await fleet.http.put(
            "/api/devices/kitchen-01/config",
            json={"telemetry_interval_s": 9},
            headers=fleet.headers(),
        )
    assert (303, "/console/login?next=/console/") == (page.status_code, page.headers["location"])
    assert [401, 401, 401] == [api.status_code, stream.status_code, write.status_code]
    assert [401, 401] == [r.status_code for r in device_logins]
    assert [401] * (FAILURES_PER_ADDRESS - 2) == [r.status_code for r in wrong]
    assert (429, "rate_limited") == (limited.status_code, limited.json()["error"]["code"])
    assert int(limited.headers["Retry-After"]) > 0
    assert 200 == logged_in.status_code
    assert [403, 403] == [no_token.status_code, wrong_token.status_code]
    assert 200 == with_token.status_code, with_token.text
    written = json.loads((fleet.configs / "kitchen-01.json").read_text())
    assert {"telemetry_interval_s": 9} == written


async def test_the_session_cookie_is_httponly_and_samesite(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_AGENT_CONSOLE_PASSWORD_HASH", hash_password(PASSWORD))
    async with console_fleet(
        broker.url, tmp_path, listen="0.0.0.0:0", login=("operator", PASSWORD)
    ) as fleet:
        answer = await fleet.http.post(
            "/api/login", json={"username": "operator", "password": PASSWORD}
        )
        logout_without_token = await fleet.http.post("/api/logout")
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert CLIENT_SECRET not in answer.text
    assert 403 == logout_without_token.status_code


def test_a_malformed_password_hash_stops_the_console(tmp_path: Path) -> None:
    from broker_agent.http.console.auth import Gate
    from broker_agent.http.listen import parse_listen

    address = parse_listen("0.0.0.0:8080")
    assert address is not None
    settings = ConsoleSettings(console_password_hash="plaintext-password")
    hashed = settings.console_password_hash
    assert hashed is not None
    with pytest.raises(SetupError, match="not a password hash"):
        Gate("operator", hashed.get_secret_value(), address)
