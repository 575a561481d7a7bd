"""Station refusals that name the real problem (issue 9, contract 6.5), through MQTT.

Real Mosquitto (with its conformance monitor), the real esptool, simulated boards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_agent.simulator import (
    MB,
    BoardConfig,
    encrypted_nvs,
    nvs_past_end,
    port_of,
    with_nvs_keys,
)
from broker_agent.station.ports import port_key
from tests.station.harness import (
    NVS_SIZE,
    REQUEST_TOPIC,
    Bench,
    assert_stream,
    boards,
    coded,
    commander,
    nvs_region,
    single_error,
)
from tests.support.mqtt import retained_snapshot
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(60)

UNUSABLE = {
    # request_id: (board, code)
    "erased": (BoardConfig(erased=True), "partition_table_unreadable"),
    "past-end": (
        BoardConfig(partitions=nvs_past_end(MB), flash_size=MB),
        "nvs_partition_out_of_range",
    ),
    "encrypted": (BoardConfig(partitions=encrypted_nvs()), "nvs_encryption_unsupported"),
    "small-keys": (
        BoardConfig(partitions=with_nvs_keys(size=0x800)),
        "nvs_encryption_unsupported",
    ),
}


async def test_unusable_tables_are_refused_with_their_own_code_and_nothing_written(
    bench: Bench,
) -> None:
    configs = [config for config, _ in UNUSABLE.values()]
    with boards(*configs) as servers:
        before = [bytes(server.board.flash) for server in servers]
        async with (
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            for request_id, server in zip(UNUSABLE, servers, strict=True):
                await operator.send(
                    {"request_id": request_id, "device_id": "kitchen-01", "port": server.url}
                )
            streams = {request_id: await operator.final(request_id) for request_id in UNUSABLE}
        after = [bytes(server.board.flash) for server in servers]

    for request_id, (_, code) in UNUSABLE.items():
        assert_stream(streams[request_id], ok=False)
        final = streams[request_id][-1]
        assert (code, "reading_partition_table") == (final["error"]["code"], final["phase"])
    assert "flash the firmware" in streams["erased"][-1]["error"]["message"]
    assert "1 MB" in streams["past-end"][-1]["error"]["message"]
    assert before == after
    assert {rid: code for rid, (_, code) in UNUSABLE.items()} == {
        line["request_id"]: line["error_code"] for line in bench.log_lines()
    }


def other_spellings(url: str) -> list[str]:
    port = port_of(url)
    return [f"socket://localhost:{port}", f"{url}/", f"SOCKET://127.0.0.1:{port}"]


@pytest.mark.parametrize("spelling", range(3), ids=["localhost", "trailing-slash", "scheme-case"])
async def test_a_busy_port_named_another_way_is_refused_port_busy(
    bench: Bench, spelling: int
) -> None:
    """No agent: the first job waits for its image, holding the port."""
    with boards(BoardConfig()) as [server]:
        settings = bench.station_settings(provision_timeout_s=20)
        async with running_station(settings), commander(bench.broker.url) as operator:
            await operator.send(
                {"request_id": "hold", "device_id": "kitchen-01", "port": server.url}
            )
            await operator.phase("hold", "fetching_nvs")
            other = other_spellings(server.url)[spelling]
            busy = await operator.run({"request_id": "second", "device_id": "dev-1", "port": other})
            await operator.cancel("hold")
            await operator.wait(lambda: coded(operator.events("hold"), "aborted"))
            untouched = nvs_region(server)

    refusal = single_error(busy)["error"]
    assert "port_busy" == refusal["code"]
    assert "hold" in refusal["message"]
    assert b"\xff" * NVS_SIZE == untouched


async def test_a_retained_command_is_refused_with_its_own_request_id(bench: Bench) -> None:
    with boards(BoardConfig()) as [server]:
        async with (
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            command = {"request_id": "kept-1", "device_id": "kitchen-01", "port": server.url}
            await operator.send(command, retain=True)
            await operator.wait(lambda: len(operator.finals()) == 1)
            retained = await retained_snapshot(bench.broker.url, REQUEST_TOPIC)

    [refusal] = operator.finals()
    assert ("kept-1", "invalid_request") == (refusal["request_id"], refusal["error"]["code"])
    assert {} == retained


# -- port_key, pure: one key for every spelling of a port -------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "socket://127.0.0.1:4000",
        "socket://localhost:4000",
        "socket://LOCALHOST:4000/",
        "Socket://127.0.0.1:04000",
        "socket://127.0.0.1:4000?logging=debug",
    ],
)
def test_every_spelling_of_a_socket_port_has_one_key(spelling: str) -> None:
    assert "socket://127.0.0.1:4000" == port_key(spelling)


def test_different_socket_ports_have_different_keys() -> None:
    keys = {
        port_key(url)
        for url in (
            "socket://127.0.0.1:4000",
            "socket://127.0.0.1:4001",
            "socket://10.0.0.2:4000",
            "rfc2217://127.0.0.1:4000",
        )
    }

    assert 4 == len(keys)


def test_a_by_id_symlink_and_its_target_have_one_key(tmp_path: Path) -> None:
    target = tmp_path / "ttyUSB0"
    target.write_bytes(b"")
    by_id = tmp_path / "serial" / "by-id"
    by_id.mkdir(parents=True)
    link = by_id / "usb-Silicon_Labs_CP2102_0001-if00-port0"
    link.symlink_to("../../ttyUSB0")

    assert port_key(str(target)) == port_key(str(link)) == port_key(f"{target}/")
