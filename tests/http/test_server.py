"""The HTTP server over real HTTP: probes, metrics, start-up errors, clean shutdown."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client.parser import text_string_to_metric_families

from broker_agent import __version__
from broker_agent.errors import SetupError
from broker_agent.http.metrics import AgentMetrics, StationMetrics
from broker_agent.http.server import HttpServer
from firmware_contracts.codes import ConfigErrorCode, ProvisionErrorCode
from tests.support.http import client, serving


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz_answers_while_the_process_runs() -> None:
    async with serving(HttpServer(AgentMetrics())) as server, client(server) as http:
        response = await http.get("/healthz")
    assert 200 == response.status_code
    assert {"status": "ok", "service": "agent", "version": __version__} == response.json()


async def test_readyz_is_503_with_the_reason_until_ready_then_200() -> None:
    reason: list[str | None] = ["not connected to the broker"]
    metrics = AgentMetrics(readiness=lambda: reason[0])
    async with serving(HttpServer(metrics)) as server, client(server) as http:
        before = await http.get("/readyz")
        gauge_before = samples((await http.get("/metrics")).text)[("broker_agent_ready", ())]
        reason[0] = "first reconcile not done"
        middle = await http.get("/readyz")
        reason[0] = None
        after = await http.get("/readyz")
        gauge_after = samples((await http.get("/metrics")).text)[("broker_agent_ready", ())]
    assert (503, {"ready": False, "reason": "not connected to the broker"}) == (
        before.status_code,
        before.json(),
    )
    assert (503, "first reconcile not done") == (middle.status_code, middle.json()["reason"])
    assert (200, {"ready": True, "reason": None}) == (after.status_code, after.json())
    assert (0.0, 1.0) == (gauge_before, gauge_after)


async def test_readyz_is_not_ready_until_a_readiness_is_wired() -> None:
    async with serving(HttpServer(StationMetrics())) as server, client(server) as http:
        response = await http.get("/readyz")
    assert (503, {"ready": False, "reason": "starting"}) == (response.status_code, response.json())


async def test_metrics_show_what_the_services_reported() -> None:
    metrics = AgentMetrics(readiness=lambda: None, fleet=lambda: {"in_sync": 7, "online": 5})
    metrics.config_rejected(ConfigErrorCode.INVALID_JSON)
    metrics.config_rejected(ConfigErrorCode.INVALID_JSON)
    metrics.provision_replied(None, 0.0007)
    metrics.provision_replied(ProvisionErrorCode.UNKNOWN_DEVICE, 0.002)
    metrics.broker_connected()
    metrics.broker_disconnected()
    metrics.broker_connected()
    async with serving(HttpServer(metrics)) as server, client(server) as http:
        response = await http.get("/metrics")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    code = "code"
    assert 2.0 == got[("broker_agent_configs_rejected_total", ((code, "invalid_json"),))]
    assert 0.0 == got[("broker_agent_configs_rejected_total", ((code, "too_large"),))]
    assert 1.0 == got[("broker_agent_provision_replies_total", ((code, "ok"),))]
    assert 1.0 == got[("broker_agent_provision_replies_total", ((code, "unknown_device"),))]
    assert 2.0 == got[("broker_agent_provision_reply_seconds_count", ())]
    assert 1.0 == got[("broker_agent_provision_reply_seconds_bucket", (("le", "0.001"),))]
    assert 2.0 == got[("broker_agent_provision_reply_seconds_bucket", (("le", "0.0025"),))]
    assert (1.0, 1.0) == (
        got[("broker_agent_broker_connected", ())],
        got[("broker_agent_broker_reconnects_total", ())],
    )
    assert (7.0, 0.0, 5.0, 0.0) == (
        got[("broker_agent_fleet_devices", (("state", "in_sync"),))],
        got[("broker_agent_fleet_devices", (("state", "failed"),))],
        got[("broker_agent_fleet_presence", (("presence", "online"),))],
        got[("broker_agent_fleet_presence", (("presence", "unknown"),))],
    )
    assert 1.0 == got[("broker_agent_info", (("service", "agent"), ("version", __version__)))]


async def test_metrics_speak_openmetrics_when_the_scraper_asks() -> None:
    metrics = StationMetrics()
    metrics.ports(attached=2, busy=1)
    async with serving(HttpServer(metrics)) as server, client(server) as http:
        response = await http.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "broker_agent_ports_busy 1.0" in response.text


async def test_openapi_and_its_docs_page_are_served_under_api() -> None:
    async with serving(HttpServer(AgentMetrics())) as server, client(server) as http:
        schema = (await http.get("/api/openapi.json")).json()
        docs = await http.get("/api/docs")
    assert {"/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "503" in schema["paths"]["/readyz"]["get"]["responses"]
    assert (200, "text/html") == (docs.status_code, docs.headers["content-type"].split(";")[0])


async def test_port_zero_binds_a_free_port_and_reports_it() -> None:
    async with serving(HttpServer(AgentMetrics())) as server:
        assert server.port is not None and server.port > 0
        assert f"http://127.0.0.1:{server.port}" == server.url
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass


async def test_ipv6_loopback_in_brackets() -> None:
    try:
        probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    probe.close()
    async with serving(HttpServer(AgentMetrics()), "[::1]:0") as server, client(server) as http:
        response = await http.get("/healthz")
    assert server.url is not None and server.url.startswith("http://[::1]:")
    assert 200 == response.status_code


async def test_a_host_name_is_resolved() -> None:
    async with serving(HttpServer(AgentMetrics()), "localhost:0") as server:
        assert server.port is not None
        assert f"http://localhost:{server.port}" == server.url


async def test_empty_listen_turns_http_off() -> None:
    server = HttpServer(AgentMetrics())
    await asyncio.wait_for(server.serve(""), timeout=2)
    assert (True, None, None) == (server.started.is_set(), server.port, server.url)


@pytest.mark.parametrize("listen", ["8080", "127.0.0.1", "::1:8080", "[::1]8080", "host:http"])
async def test_a_bad_listen_value_is_one_setup_error_line(listen: str) -> None:
    server = HttpServer(AgentMetrics())
    with pytest.raises(SetupError) as caught:
        await server.serve(listen)
    message = str(caught.value)
    assert repr(listen) in message
    assert "\n" not in message
    assert not server.started.is_set()


async def test_a_port_in_use_is_a_setup_error_naming_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SetupError, match=rf"127\.0\.0\.1:{port}: the port is in use"):
            async with serving(HttpServer(AgentMetrics()), f"127.0.0.1:{port}"):
                pass


async def test_an_unresolvable_host_is_a_setup_error() -> None:
    with pytest.raises(
        SetupError, match=re.escape("cannot listen for HTTP on no-such-host.invalid:0")
    ):
        async with serving(HttpServer(AgentMetrics()), "no-such-host.invalid:0"):
            pass


async def test_serving_leaves_signal_handlers_and_threads_alone() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = set(threading.enumerate())
    async with serving(HttpServer(AgentMetrics())) as server, client(server) as http:
        assert 200 == (await http.get("/healthz")).status_code
        during = {sig: signal.getsignal(sig) for sig in handlers}
        threads_during = set(threading.enumerate())
    assert handlers == during
    assert set() == threads_during - threads


async def test_cancel_stops_at_once_and_frees_the_port() -> None:
    server = HttpServer(AgentMetrics())
    async with client_kept_alive() as http:
        async with serving(server):
            port = server.port
            assert 200 == (await http.get(f"{server.url}/healthz")).status_code
            began = time.monotonic()
        stopped_in = time.monotonic() - began
    assert stopped_in < server.shutdown_grace_s  # the idle keep-alive connection did not hold it
    assert not server.started.is_set()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    again = HttpServer(AgentMetrics())
    async with serving(again, f"127.0.0.1:{port}"), client(again) as http:
        assert 200 == (await http.get("/healthz")).status_code


def client_kept_alive() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=5.0)


async def test_an_event_stream_ends_cleanly_when_the_server_stops() -> None:
    """The console's live updates (SSE) never end on their own; they end on ``stopping``."""
    server = HttpServer(AgentMetrics(), shutdown_grace_s=2)

    @server.app.get("/test-events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(event="hello", data="1")
        await server.stopping.wait()
        yield ServerSentEvent(event="bye", data="")

    lines, stopped_in = await stop_while_streaming(server)
    assert ["event: hello", "event: bye"] == [line for line in lines if line.startswith("event")]
    assert stopped_in < 1.0  # did not wait for the grace period


async def test_an_event_stream_that_ignores_stopping_is_cut_after_the_grace() -> None:
    server = HttpServer(AgentMetrics(), shutdown_grace_s=1)

    @server.app.get("/test-events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(event="hello", data="1")
        await asyncio.Event().wait()
        yield ServerSentEvent(event="never", data="")

    with pytest.raises(httpx.RemoteProtocolError):  # the body ends mid-stream
        await stop_while_streaming(server)
    assert server.stopping.is_set()


async def stop_while_streaming(server: HttpServer) -> tuple[list[str], float]:
    """Open /test-events, read its first line, stop the server; all lines and the stop time."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        async with serving(server):
            request = http.build_request("GET", f"{server.url}/test-events")
            stream = await http.send(request, stream=True)
            lines = stream.aiter_lines()  # held: dropping it would close the connection
            received = [await anext(lines)]
            began = time.monotonic()
        stopped_in = time.monotonic() - began
        try:
            received += [line async for line in lines]
        finally:
            await stream.aclose()
    return received, stopped_in
