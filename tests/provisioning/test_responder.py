"""The provisioning responder against a real Mosquitto and the real agent (contract section 3)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import stat
import sys
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_agent import cli
from broker_agent.app import Agent
from broker_agent.broker.process import free_port
from broker_agent.errors import ProvisionFailure
from broker_agent.mqtt import Router, make_connection
from broker_agent.provisioning.messages import ProvisionedImage
from broker_agent.provisioning.requester import ImageRequester
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.identifiers import is_request_id
from firmware_contracts.nvs import NVS_NAMESPACE
from firmware_contracts.payloads import AgentEvent
from firmware_contracts.topics import TopicKind
from tests.support.agent import running_agent
from tests.support.broker import PROJECT, Broker
from tests.support.mqtt import observe, retained_snapshot
from tests.support.nvs_parser import parse_nvs
from tests.support.provisioning import (
    FLEET,
    KITCHEN,
    SECRETS,
    TOPICS,
    Fleet,
    Reply,
    error_of,
    ok_image,
    requester,
)

pytestmark = pytest.mark.timeout(60)


# -- the happy path ---------------------------------------------------------------------------


@dataclass
class TwoImages:
    """kitchen-01 asked over v5 with a response topic below its own; garage-door without one."""

    reply_to: str
    kitchen: Reply
    garage: Reply
    events: list[dict[str, Any]]
    logs: list[MutableMapping[str, Any]]  # as structlog.testing.capture_logs gives them


async def provision_two_devices(fleet: Fleet) -> TwoImages:
    reply_to = TOPICS.provision_response("kitchen-01") + "/station-1/job-7"
    with structlog.testing.capture_logs() as logs:
        async with (
            observe(fleet.broker.url, "iot/agents/+/events") as events,
            running_agent(fleet.settings()),
            requester(fleet.broker) as station,
        ):
            kitchen = await station.ask(
                "kitchen-01",
                {"request_id": "r-17", "partition_size": 0x5000},
                response_topic=reply_to,
            )
            garage = await station.ask("garage-door", {"partition_size": 0x3000})
            await events.wait_for(lambda: len(events.events()) >= 2)
    return TwoImages(reply_to, kitchen, garage, events.events(), logs)


async def test_v5_request_gets_its_answer_on_its_response_topic_with_an_expiry(
    fleet: Fleet,
) -> None:
    images = await provision_two_devices(fleet)  # matched to the request by its correlation

    assert images.reply_to == images.kitchen.topic
    assert not images.kitchen.retain
    assert 60 >= images.kitchen.properties.MessageExpiryInterval > 50


async def test_the_image_holds_the_fleet_values_and_the_devices_credentials(fleet: Fleet) -> None:
    images = await provision_two_devices(fleet)

    ok, values = ok_image(images.kitchen)
    assert ("r-17", "kitchen-01", 0x5000) == (ok.request_id, ok.device_id, ok.partition_size)
    assert {**FLEET, **KITCHEN, "device_key": "kitchen-01"} == values
    assert [
        "device_key",
        "client_id",
        "client_secret",
        "token_url",
        "base_url",
        "wifi_ssid",
        "wifi_password",
    ] == ok.keys


async def test_optional_keys_are_left_out_when_unset(fleet: Fleet) -> None:
    """No mqtt_url in the fleet; garage-door nulls wifi_ssid. (No response topic and no
    request_id either: the default topic, and a made-up id.)"""
    images = await provision_two_devices(fleet)

    small_ok, small_values = ok_image(images.garage)
    assert TOPICS.provision_response("garage-door") == images.garage.topic
    assert is_request_id(small_ok.request_id)
    assert 0x3000 == small_ok.partition_size
    assert {
        "device_key",
        "client_id",
        "client_secret",
        "token_url",
        "base_url",
        "wifi_password",
    } == set(small_values)


async def test_each_image_is_reported_as_a_provisioned_event_and_logged(fleet: Fleet) -> None:
    images = await provision_two_devices(fleet)

    ok, small_ok = ok_image(images.kitchen)[0], ok_image(images.garage)[0]
    provisioned = [
        AgentEvent.model_validate(e) for e in images.events if e["event"] == "provisioned"
    ]
    assert {
        ("kitchen-01", 0x5000, ok.md5, "r-17"),
        ("garage-door", 0x3000, small_ok.md5, small_ok.request_id),
    } == {(e.device_id, e.partition_size, e.md5, e.request_id) for e in provisioned}
    assert {"provisioned"} <= {entry["event"] for entry in images.logs}


async def test_no_secret_reaches_the_events_or_the_logs(fleet: Fleet) -> None:
    images = await provision_two_devices(fleet)

    everything = json.dumps([*images.events, *images.logs], default=str)
    for value in (*SECRETS, "GARAGE-SECRET-1"):
        assert value not in everything


async def test_mqtt_311_requester_gets_the_default_response_topic(fleet: Fleet) -> None:
    async with (
        running_agent(fleet.settings()),
        requester(fleet.broker, aiomqtt.ProtocolVersion.V311) as station,
    ):
        await station.send("kitchen-01", {"request_id": "old-client", "partition_size": 0x4000})
        reply = (await station.wait(1))[0]

    assert TOPICS.provision_response("kitchen-01") == reply.topic
    ok, values = ok_image(reply)
    assert "old-client" == ok.request_id
    assert KITCHEN["client_secret"] == values["client_secret"]


# -- every refusal ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    device: str
    payload: bytes | dict[str, Any]
    code: ProvisionErrorCode
    in_message: str
    echoed_id: str | None = None  # None: the request_id must be a made-up one
    response_topic: str | None = None


INVALID, SIZE = ProvisionErrorCode.INVALID_REQUEST, ProvisionErrorCode.INVALID_PARTITION_SIZE
UNKNOWN, UNAVAILABLE = ProvisionErrorCode.UNKNOWN_DEVICE, ProvisionErrorCode.CREDENTIALS_UNAVAILABLE
BAD_TOPIC = ProvisionErrorCode.INVALID_RESPONSE_TOPIC
K = "kitchen-01"
REFUSALS = [
    Refusal(K, b"not json", INVALID, "not JSON"),
    Refusal(K, b"", INVALID, "not JSON"),
    Refusal(K, b"[1]", INVALID, "JSON object"),
    Refusal(K, {"request_id": "a1"}, INVALID, "partition_size is required", "a1"),
    Refusal(K, {"request_id": "a2", "partition_size": "0x5000"}, INVALID, "integer", "a2"),
    Refusal(K, {"request_id": "a3", "partition_size": 0x5000, "x": 1}, INVALID, "'x'", "a3"),
    Refusal(K, {"request_id": "", "partition_size": 0x5000}, INVALID, "request_id"),
    Refusal(K, {"request_id": "x" * 65, "partition_size": 0x5000}, INVALID, "request_id"),
    Refusal(K, {"request_id": "bell\x07", "partition_size": 0x5000}, INVALID, "request_id"),
    Refusal(K, {"request_id": "b1", "partition_size": 0x2000}, SIZE, ">= 12288", "b1"),
    Refusal(K, {"request_id": "b2", "partition_size": 0x5001}, SIZE, "multiple of 4096", "b2"),
    Refusal(K, {"request_id": "b3", "partition_size": 0x200000}, SIZE, "<= 1048576", "b3"),
    Refusal("nobody", {"request_id": "c1", "partition_size": 0x5000}, UNKNOWN, "nobody", "c1"),
    Refusal(
        "lonely",
        {"request_id": "d1", "partition_size": 0x5000},
        UNAVAILABLE,
        "client_id, client_secret",
        "d1",
    ),
    Refusal(
        "broken",
        {"request_id": "d2", "partition_size": 0x5000},
        UNAVAILABLE,
        "broken.json is not valid JSON",
        "d2",
    ),
    Refusal(
        K,
        {"request_id": "e1", "partition_size": 0x5000},
        BAD_TOPIC,
        "iot/provision/kitchen-01/response",
        "e1",
        "iot/provision/garage-door/response",
    ),
    Refusal(
        K,
        {"request_id": "e2", "partition_size": 0x5000},
        BAD_TOPIC,
        "below it",
        "e2",
        "somewhere/else",
    ),
    Refusal(
        K,
        {"request_id": "e3", "partition_size": 0x5000},
        BAD_TOPIC,
        "below it",
        "e3",
        "iot/provision/kitchen-01/responses",
    ),
]


@pytest.mark.allow_contract_violations  # malformed requests on purpose; replies checked here
async def test_every_error_code_over_the_wire(fleet: Fleet) -> None:
    (fleet.config_dir / "broken.json").write_text("{}")
    (fleet.secrets_dir / "broken.json").write_text('{"client_secret": "BROKEN-SECRET-77", }')

    async with running_agent(fleet.settings()), requester(fleet.broker) as station:
        replies = [
            await station.ask(case.device, case.payload, response_topic=case.response_topic)
            for case in REFUSALS
        ]

    for case, reply in zip(REFUSALS, replies, strict=True):
        request_id, code, message = error_of(reply)
        assert (case.device, case.code) == (reply.document["device_id"], code)
        assert case.in_message in message
        assert TOPICS.provision_response(case.device) == reply.topic  # refused: the default topic
        assert is_request_id(request_id)
        if case.echoed_id is not None:
            assert case.echoed_id == request_id
        for value in (*SECRETS, "BROKEN-SECRET-77"):
            assert value not in message


@pytest.mark.allow_contract_violations  # malformed requests on purpose; replies checked here
@pytest.mark.parametrize("group", ["broker-agents", ""])
async def test_retained_requests_are_refused_and_cleared(fleet: Fleet, group: str) -> None:
    async with requester(fleet.broker) as station:
        # retained before any agent subscribed: found at subscribe time
        await station.send(
            "kitchen-01", {"request_id": "before", "partition_size": 0x5000}, retain=True
        )
        await station.send("garage-door", b"garbage", retain=True)
        async with running_agent(fleet.settings(provision_shared_group=group)):
            await station.wait(2)
            # retained while the agent is subscribed: seen live, with the retain flag
            await station.send(
                "kitchen-01",
                {"request_id": "during", "partition_size": 0x5000},
                retain=True,
                response_topic="iot/provision/kitchen-01/response/x",
                correlation=b"c-during",
            )
            await station.wait(3)
            normal = await station.ask(
                "kitchen-01", {"request_id": "after", "partition_size": 0x5000}
            )
            assert "ok" == normal.document["status"]
            left = await retained_snapshot(fleet.broker.url, "iot/provision/#")
    replies = station.replies

    refused = {r.document["request_id"]: r for r in replies if r.document["status"] == "error"}
    assert 3 == len(refused)
    assert {"before", "during"} <= set(refused)
    for reply in refused.values():
        assert ProvisionErrorCode.RETAINED_REQUEST_REJECTED == error_of(reply)[1]
        assert not reply.retain
    assert "iot/provision/kitchen-01/response/x" == refused["during"].topic
    assert b"c-during" == refused["during"].correlation
    assert {"garage-door", "kitchen-01"} == {r.document["device_id"] for r in refused.values()}
    assert 4 == len(replies)  # exactly one answer each, nothing for the clearing publishes
    assert {} == left  # every retained request was cleared


@pytest.mark.allow_contract_violations  # malformed requests on purpose; replies checked here
async def test_a_request_on_an_invalid_device_id_topic_gets_no_reply(fleet: Fleet) -> None:
    bad_ids = ("Kitchen-01", "-x", "a b", "x" * 65)

    async with (
        observe(fleet.broker.url, "#") as everything,
        running_agent(fleet.settings()),
        requester(fleet.broker) as station,
    ):
        for bad in bad_ids:
            topic = f"iot/provision/{bad}/request"
            await station.send("", {"request_id": "bad", "partition_size": 0x5000}, topic=topic)
        # a valid request afterwards: once its answer is in, one to the others would be too
        good = await station.ask("kitchen-01", {"request_id": "good", "partition_size": 0x5000})
        await everything.wait_for(lambda: good.topic in everything.latest)
        seen = [topic for topic in everything.topics if topic.startswith("iot/provision/")]

    requests = [f"iot/provision/{bad}/request" for bad in bad_ids] + [
        "iot/provision/kitchen-01/request"
    ]
    assert [*requests, "iot/provision/kitchen-01/response"] == seen


# -- credentials at run time ------------------------------------------------------------------


async def test_an_edited_secrets_file_is_used_by_the_next_request(fleet: Fleet) -> None:
    async with running_agent(fleet.settings()), requester(fleet.broker) as station:
        first = ok_image(await station.ask("kitchen-01", {"partition_size": 0x5000}))[1]
        path = fleet.secrets_dir / "kitchen-01.json"
        path.write_text(json.dumps({**KITCHEN, "client_secret": "ROTATED", "mqtt_url": "mqtt://m"}))
        second = ok_image(await station.ask("kitchen-01", {"partition_size": 0x5000}))[1]

    assert KITCHEN["client_secret"] == first["client_secret"]
    assert "mqtt_url" not in first
    assert ("ROTATED", "mqtt://m") == (second["client_secret"], second["mqtt_url"])


async def test_issuing_is_idempotent_across_agent_restarts(fleet: Fleet) -> None:
    settings = fleet.settings(issue_credentials=True)

    async def provision_lonely() -> dict[str, str]:
        async with running_agent(settings), requester(fleet.broker) as station:
            return ok_image(await station.ask("lonely", {"partition_size": 0x5000}))[1]

    first = await provision_lonely()
    second = await provision_lonely()

    path = fleet.secrets_dir / "lonely.json"
    stored = json.loads(path.read_text())
    assert "iotdevice-lonely" == first["client_id"] == stored["client_id"]
    assert first["client_secret"] == second["client_secret"] == stored["client_secret"]
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


async def test_internal_error_when_issued_credentials_cannot_be_stored(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A real failure, not a mock: the agent process may not write files (RLIMIT_FSIZE 0)."""

    def no_file_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONDONTWRITEBYTECODE": "1"}
    with (tmp_path / "agent.log").open("wb") as agent_log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker_agent.cli",
            "run",
            "--broker-url",
            fleet.broker.url,
            "--config-dir",
            str(fleet.config_dir),
            "--secrets-dir",
            str(fleet.secrets_dir),
            "--agent-id",
            "limited",
            "--issue-credentials",
            "--log-format",
            "json",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=agent_log,
            env=env,
            preexec_fn=no_file_writes,
        )
        try:
            async with observe(fleet.broker.url, TOPICS.agent_status("limited")) as status:
                await status.wait_for(
                    lambda: b'"online"' in status.latest.get(TOPICS.agent_status("limited"), b""),
                    20,
                )
            async with requester(fleet.broker) as station:
                reply = await station.ask("lonely", {"request_id": "i1", "partition_size": 0x5000})
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)

    request_id, code, message = error_of(reply)
    assert ("i1", ProvisionErrorCode.INTERNAL_ERROR) == (request_id, code)
    assert "could not store issued credentials in lonely.json" in message
    assert not (fleet.secrets_dir / "lonely.json").exists()


# -- replicas -------------------------------------------------------------------------------


async def test_two_agents_share_200_requests_without_duplicates_or_losses(fleet: Fleet) -> None:
    async with (
        observe(fleet.broker.url, "iot/agents/+/events") as events,
        running_agent(fleet.settings(agent_id="replica-a")),
        running_agent(fleet.settings(agent_id="replica-b")),
        requester(fleet.broker) as station,
    ):
        for index in range(200):
            await station.send(
                "kitchen-01",
                {"request_id": f"n-{index}", "partition_size": 0x3000},
                response_topic=f"iot/provision/kitchen-01/response/{index % 7}",
            )
        await station.wait(200)

        def provisioned_by(agent: str) -> int:
            found = events.json_on(TOPICS.agent_events(agent))
            return sum(1 for event in found if event["event"] == "provisioned")

        await events.wait_for(
            lambda: provisioned_by("replica-a") + provisioned_by("replica-b") >= 200
        )
        await asyncio.sleep(0.3)  # room for a duplicate to show up, were there one
        per_agent = {agent: provisioned_by(agent) for agent in ("replica-a", "replica-b")}
        replies = station.replies

    ids = [r.document["request_id"] for r in replies]
    assert 200 == len(ids)
    assert {f"n-{i}" for i in range(200)} == set(ids)
    assert all(r.document["status"] == "ok" for r in replies)
    assert all(
        r.topic.endswith(f"/response/{int(r.document['request_id'][2:]) % 7}") for r in replies
    )
    assert 200 == sum(per_agent.values())
    assert min(per_agent.values()) > 0, per_agent  # both replicas took a share


# -- hypothesis: random payloads against one running agent -------------------------------------


@pytest.fixture
async def agent(fleet: Fleet) -> AsyncIterator[Agent]:
    """One agent for the whole test: every hypothesis example runs in this loop while it runs."""
    async with running_agent(fleet.settings()) as running:
        yield running


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
)
_payload_objects = st.dictionaries(
    st.sampled_from(["request_id", "partition_size", "device_id", "x"]),
    _scalars | st.sampled_from([0x3000, 0x5000, 0x4001, 0x1000]) | st.lists(_scalars, max_size=2),
    max_size=3,
)
_payloads = st.one_of(
    _payload_objects.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
)


@pytest.mark.allow_contract_violations  # malformed requests on purpose; replies checked here
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=_payloads, device=st.sampled_from(["kitchen-01", "lonely", "nobody"]))
async def test_random_payloads_always_get_one_contract_valid_reply(
    agent: Agent, fleet: Fleet, payload: bytes, device: str
) -> None:
    async with requester(fleet.broker) as station:
        reply = await station.ask(device, payload)

    assert TOPICS.provision_response(device) == reply.topic
    if reply.document["status"] == "ok":
        ok, _ = ok_image(reply)
        assert device == ok.device_id
    else:
        _, code, message = error_of(reply)
        assert device == reply.document["device_id"]
        assert code is not ProvisionErrorCode.INTERNAL_ERROR
        for value in SECRETS:
            assert value not in message
    try:
        sent = json.loads(payload)
    except ValueError:
        sent = None
    if isinstance(sent, dict) and is_request_id(sent.get("request_id")):
        assert sent["request_id"] == reply.document["request_id"]
    assert is_request_id(reply.document["request_id"])


async def test_provision_requester_serves_concurrent_requests_on_one_routed_client(
    fleet: Fleet,
) -> None:
    """The flash station's way: its own router hands messages to the requester."""
    settings = fleet.settings()
    async with running_agent(settings):
        requester = ImageRequester(TOPICS, "station-1", 5)
        declined: list[str] = []
        router = Router(
            TOPICS,
            {TopicKind.PROVISION_RESPONSE: requester.on_response},
            unmatched=lambda message: declined.append(message.topic),
        )
        connection = make_connection(
            settings, fleet.broker.url, client_id="requester", route=router
        )
        async with connection:
            await requester.attach(connection)
            kitchen, garage, nobody = await asyncio.gather(
                requester.request("kitchen-01", 0x5000),
                requester.request("garage-door", 0x3000, "job-7"),
                requester.request("nobody", 0x5000),
                return_exceptions=True,
            )

    assert [] == declined
    assert isinstance(kitchen, ProvisionedImage) and isinstance(garage, ProvisionedImage)
    assert (
        KITCHEN["client_secret"] == parse_nvs(kitchen.data).strings(NVS_NAMESPACE)["client_secret"]
    )
    assert ("garage-door", 0x3000, 0x3000) == (
        garage.device_id,
        garage.partition_size,
        len(garage.data),
    )
    assert isinstance(nobody, ProvisionFailure)
    assert ProvisionErrorCode.UNKNOWN_DEVICE == nobody.code


# -- the provision command --------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


async def run_cli_beside(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``run_cli`` in a thread, so that the agent in this loop keeps serving meanwhile."""
    return await asyncio.to_thread(run_cli, argv, capsys)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BROKER_AGENT_"):
            monkeypatch.delenv(name)


def online_argv(device: str, output: Path, broker: Broker) -> list[str]:
    return [
        "provision",
        device,
        "--partition-size",
        "0x5000",
        "-o",
        str(output),
        "--broker-url",
        broker.url,
    ]


def offline_argv(device: str, output: Path, fleet: Fleet) -> list[str]:
    return [
        "provision",
        device,
        "--partition-size",
        "20480",
        "-o",
        str(output),
        "--offline",
        "--secrets-dir",
        str(fleet.secrets_dir),
        "--config-dir",
        str(fleet.config_dir),
    ]


async def test_provision_command_writes_the_image_to_a_private_file(
    agent: Agent,
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    online = tmp_path / "online.bin"
    code, out, err = await run_cli_beside(online_argv("kitchen-01", online, fleet.broker), capsys)

    assert (0, "") == (code, err)
    assert (
        "keys: device_key, client_id, client_secret, token_url, base_url, wifi_ssid, wifi_password"
        in out
    )
    values = parse_nvs(online.read_bytes()).strings(NVS_NAMESPACE)
    assert KITCHEN["client_secret"] == values["client_secret"]
    assert 0o600 == stat.S_IMODE(online.stat().st_mode)
    for value in SECRETS:
        assert value not in out


async def test_provision_command_online_and_offline_give_the_same_image(
    agent: Agent,
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    online, offline = tmp_path / "online.bin", tmp_path / "offline.bin"
    _, out, _ = await run_cli_beside(online_argv("kitchen-01", online, fleet.broker), capsys)
    code, offline_out, err = run_cli(offline_argv("kitchen-01", offline, fleet), capsys)

    assert (0, "") == (code, err)
    assert online.read_bytes() == offline.read_bytes()
    md5_line = next(line for line in out.splitlines() if line.startswith("md5: "))
    assert md5_line in offline_out


async def test_provision_command_reports_an_unknown_device(
    agent: Agent,
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    output = tmp_path / "x.bin"
    code, _, err = await run_cli_beside(online_argv("nobody", output, fleet.broker), capsys)

    assert 1 == code
    assert err.startswith("error: unknown_device: ")
    assert not output.exists()


PROVISION = ["provision", "kitchen-01", "--partition-size", "0x5000"]


def test_provision_command_without_a_broker_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    output = tmp_path / "x.bin"
    code, _, err = run_cli([*PROVISION, "-o", str(output)], capsys)

    assert 2 == code
    assert "needs a broker" in err and 1 == len(err.strip().splitlines())
    assert not output.exists()


def test_provision_command_refuses_an_invalid_device_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    output = tmp_path / "x.bin"
    argv = ["provision", "Bad Id", "--partition-size", "0x5000", "-o", str(output), "--offline"]
    code, _, err = run_cli(argv, capsys)

    assert 2 == code and "device_id" in err
    assert not output.exists()


def test_provision_command_times_out_when_no_agent_answers(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    output = tmp_path / "x.bin"
    argv = [*PROVISION, "-o", str(output), "--broker-url", broker.url, "--timeout", "0.5"]
    code, _, err = run_cli(argv, capsys)

    assert 1 == code
    assert err.startswith("error: provisioning_timeout: no answer")
    assert not output.exists()


def test_provision_command_reports_an_invalid_partition_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    output = tmp_path / "x.bin"
    argv = ["provision", "kitchen-01", "--partition-size", "0x5001", "-o", str(output)]
    code, _, err = run_cli([*argv, "--offline", "--secrets-dir", str(tmp_path)], capsys)

    assert (
        1,
        "error: invalid_partition_size: partition_size must be a multiple of 4096 and >= 12288\n",
    ) == (code, err)
    assert not output.exists()


def test_provision_command_reports_an_unreachable_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    output = tmp_path / "x.bin"
    nobody_listens = f"mqtt://127.0.0.1:{free_port()}"
    argv = [*PROVISION, "-o", str(output), "--broker-url", nobody_listens, "--timeout", "2"]
    code, _, err = run_cli(argv, capsys)

    assert 1 == code
    assert err.startswith("error: broker_unavailable: ")
    assert not output.exists()
