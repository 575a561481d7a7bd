"""NVS encryption, the station side (issue 14), end to end: real Mosquitto (with its conformance
monitor), the real agent, the station with its worker processes, the real esptool, and
simulated boards whose table has an ``nvs_keys`` partition. What a board holds afterwards is
read from the simulator's flash and decrypted here (``tests/support/nvs_parser.decrypt_nvs``,
written independently of Espressif's generator).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from broker_agent.errors import FlashJobError
from broker_agent.provisioning.nvs_keys import nvs_keys_partition
from broker_agent.simulator import (
    BoardConfig,
    BoardServer,
    SimulatedBoard,
    encrypted_nvs,
    with_nvs_keys,
)
from broker_agent.simulator.tables import NVS_KEYS_DEFAULT_OFFSET
from broker_agent.station.commands import JobRequest
from broker_agent.station.flasher import FlashProgress, run_flash_job
from broker_agent.station.targets import NvsImage, NvsTarget
from firmware_contracts.codes import FlashErrorCode, FlashPhase
from tests.conftest import PROJECT
from tests.station.harness import (
    Bench,
    Plugged,
    assert_stream,
    bench_of,
    boards,
    commander,
    credentials,
    next_auto_final,
    nvs_region,
    simulated,
)
from tests.support.nvs_parser import decrypt_nvs, parse_nvs
from tests.support.station import running_station

pytestmark = pytest.mark.timeout(90)

DEVICE = "kitchen-01"
KEYS_SIZE = 0x1000


def encrypted_board(mac: str = "24:0a:c4:00:00:e1") -> BoardConfig:
    return BoardConfig(mac=mac, partitions=with_nvs_keys())


def stored_key(bench: Bench, device_id: str = DEVICE) -> bytes:
    return (bench.secrets_dir / "_nvs_keys" / f"{device_id}.bin").read_bytes()


def keys_region(server: BoardServer | Plugged) -> bytes:
    start = NVS_KEYS_DEFAULT_OFFSET
    return bytes(server.board.flash[start : start + KEYS_SIZE])


def command(request_id: str, server: BoardServer, **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "device_id": DEVICE, "port": server.url, **extra}


async def flash_once(bench: Bench, server: BoardServer) -> list[dict[str, Any]]:
    """One commanded job on ``server`` with the agent running; its events."""
    async with (
        bench.agent(),
        running_station(bench.station_settings()),
        commander(bench.broker.url) as operator,
    ):
        return await operator.run(command("enc-1", server))


def secret_forms(key: bytes) -> list[bytes]:
    """How a key could leak into text: raw, hex, base64 (of the key and of each half)."""
    forms = []
    for part in (key, key[:32], key[32:]):
        forms += [part, part.hex().encode(), base64.b64encode(part)]
    return forms


# -- the flasher alone (no agent): two writes, one writing phase ------------------------------


def test_the_flasher_writes_both_images_with_progress_shared_by_size() -> None:
    image = NvsImage(os.urandom(0x5000), os.urandom(KEYS_SIZE))  # incompressible: real blocks
    reports: list[FlashProgress] = []
    targets: list[NvsTarget] = []

    def fetch(target: NvsTarget) -> NvsImage:
        targets.append(target)
        return image

    with boards(encrypted_board()) as [server]:
        job = JobRequest("enc-1", DEVICE, server.url)
        outcome = run_flash_job(job, fetch, reports.append, threading.Event())
        written = nvs_region(server), keys_region(server)

    assert (image.data, image.nvs_keys) == written
    assert [True] == [target.encrypted for target in targets]
    assert (0xF000, True) == (getattr(outcome.nvs_keys, "offset", None), outcome.encrypted)
    writing = [r.progress for r in reports if r.phase is FlashPhase.WRITING]
    assert sorted(writing) == writing
    assert {79, 89} <= set(writing)  # nvs done at 5/6 of 30..89, the keys take the rest


def test_an_nvs_keys_board_given_no_keys_image_is_refused_before_writing() -> None:
    with boards(encrypted_board()) as [server]:
        before = bytes(server.board.flash)
        with pytest.raises(FlashJobError) as caught:
            run_flash_job(
                JobRequest("enc-1", DEVICE, server.url),
                lambda target: NvsImage(os.urandom(target.nvs.size)),
                lambda report: None,
                threading.Event(),
            )
        after = bytes(server.board.flash)

    assert (FlashErrorCode.BLOB_SIZE_MISMATCH, FlashPhase.FETCHING_NVS) == (
        caught.value.code,
        caught.value.phase,
    )
    assert before == after


# -- a board with nvs_keys, commanded ---------------------------------------------------------


async def test_the_nvs_keys_partition_holds_the_devices_stored_key(bench: Bench) -> None:
    with boards(encrypted_board()) as [server]:
        events = await flash_once(bench, server)
        written = keys_region(server)

    assert "ok" == events[-1]["status"]
    assert nvs_keys_partition(stored_key(bench)) == written


async def test_the_nvs_image_decrypts_with_that_key_to_exactly_the_secrets(bench: Bench) -> None:
    with boards(encrypted_board()) as [server]:
        await flash_once(bench, server)
        image = nvs_region(server)

    assert credentials(DEVICE) == parse_nvs(decrypt_nvs(image, stored_key(bench))).strings("prov")


async def test_the_nvs_image_in_flash_is_ciphertext(bench: Bench) -> None:
    with boards(encrypted_board()) as [server]:
        await flash_once(bench, server)
        image = nvs_region(server)

    secret = credentials(DEVICE)["client_secret"].encode()
    assert secret not in image
    assert b"prov" not in image  # even the namespace entry is encrypted


async def test_the_stream_conforms_and_ok_carries_the_md5_of_the_nvs_image(bench: Bench) -> None:
    with boards(encrypted_board()) as [server]:
        events = await flash_once(bench, server)
        image = nvs_region(server)

    assert_stream(events, ok=True)  # the broker's conformance monitor checks every message too
    assert [
        "connecting",
        "reading_partition_table",
        "fetching_nvs",
        "writing",
        "verifying",
        "done",
    ] == list(dict.fromkeys(event["phase"] for event in events))
    assert hashlib.md5(image).hexdigest() == events[-1]["md5"]
    assert {"offset": 0x9000, "size": 0x5000} == events[-1]["partition"]


async def test_neither_events_nor_logs_hold_the_key(
    bench: Bench, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with boards(encrypted_board()) as [server]:
        events = await flash_once(bench, server)

    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert "flash_job_finished" in logs  # the station's and the agent's lines were captured
    text = (json.dumps(events) + bench.log_path.read_text() + logs).encode()
    assert [] == [form for form in secret_forms(stored_key(bench)) if form in text]


async def test_the_manufacturing_log_records_that_the_image_was_encrypted(bench: Bench) -> None:
    with boards(encrypted_board(), BoardConfig(mac="24:0a:c4:00:00:e2")) as [encrypted, plain]:
        async with (
            bench.agent(),
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            await operator.run(command("enc-1", encrypted))
            await operator.run(command("plain-1", plain))

    assert {"enc-1": True, "plain-1": False} == {
        line["request_id"]: line["encrypted"] for line in bench.log_lines()
    }


# -- refusals -----------------------------------------------------------------------------------


async def test_nvs_flagged_encrypted_is_refused_with_nothing_written_or_asked(
    bench: Bench,
) -> None:
    config = BoardConfig(partitions=encrypted_nvs(with_nvs_keys()))
    with boards(config) as [server]:
        before = bytes(server.board.flash)
        async with (
            bench.agent(),
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            events = await operator.run(command("enc-flagged", server))
        after = bytes(server.board.flash)

    assert_stream(events, ok=False)
    error = events[-1]["error"]
    assert ("nvs_encryption_unsupported", "reading_partition_table") == (
        error["code"],
        events[-1]["phase"],
    )
    assert "put it on nvs_keys" in error["message"]
    assert before == after
    assert not (bench.secrets_dir / "_nvs_keys" / f"{DEVICE}.bin").exists()  # agent not asked


# -- skip by MD5 and --force --------------------------------------------------------------------


async def test_a_rerun_is_skipped_and_force_rewrites_both_partitions(bench: Bench) -> None:
    with boards(encrypted_board()) as [server]:
        async with (
            bench.agent(),
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            first = await operator.run(command("enc-1", server))
            written = nvs_region(server), keys_region(server)
            again = await operator.run(command("enc-2", server))
            forced = await operator.run(command("enc-3", server, force=True))
            after = nvs_region(server), keys_region(server)

    assert [None, True, None] == [events[-1].get("skipped") for events in (first, again, forced)]
    assert "writing" not in [event["phase"] for event in again]
    assert "writing" in [event["phase"] for event in forced]
    assert written == after  # XTS with the device's one key: the same bytes every time
    assert [False, True, False] == [line["skipped"] for line in bench.log_lines()]


async def test_a_board_whose_keys_partition_differs_is_rewritten(bench: Bench) -> None:
    """The nvs image alone matching is not enough: both partitions are compared."""
    with boards(encrypted_board()) as [server]:
        async with (
            bench.agent(),
            running_station(bench.station_settings()),
            commander(bench.broker.url) as operator,
        ):
            await operator.run(command("enc-1", server))
            start = NVS_KEYS_DEFAULT_OFFSET
            server.board.flash[start : start + KEYS_SIZE] = b"\xff" * KEYS_SIZE
            again = await operator.run(command("enc-2", server))
            keys = keys_region(server)

    assert (None, "ok") == (again[-1].get("skipped"), again[-1]["status"])
    assert nvs_keys_partition(stored_key(bench)) == keys


async def test_a_replugged_encrypted_board_is_skipped_on_a_zero_touch_bench(
    bench: Bench, tmp_path: Path
) -> None:
    queue = tmp_path / "queue.txt"
    queue.write_text("dev-1\ndev-2\n")
    settings = bench.station_settings(simulate=1, auto=queue)
    async with (
        bench.agent(),
        commander(bench.broker.url) as operator,
        running_station(settings) as station,
    ):
        await next_auto_final(operator, 0)  # the bench's own plain board: dev-1
        url = bench_of(station).plug(SimulatedBoard(encrypted_board()))
        first = await next_auto_final(operator, 1)
        board = bench_of(station).unplug(url)
        await operator.wait(lambda: len(operator.statuses[-1]["ports"]) == 1)
        bench_of(station).plug(board)
        again = await next_auto_final(operator, 2)
        keys = keys_region(simulated(station)[1])

    assert ("ok", "dev-2", None) == (first["status"], first["device_id"], first.get("skipped"))
    assert ("ok", "dev-2", True) == (again["status"], again["device_id"], again["skipped"])
    assert nvs_keys_partition(stored_key(bench, "dev-2")) == keys


# -- broker-agent flash --offline ---------------------------------------------------------------


def offline_flash(bench: Bench, server: BoardServer, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env |= {"PYTHONPATH": str(PROJECT), "BROKER_AGENT_LOG_FORMAT": "json"}
    args = [
        sys.executable, "-m", "broker_agent.cli", "flash", DEVICE, "--port", server.url,
        "--offline", "--secrets-dir", str(bench.secrets_dir),
        "--config-dir", str(bench.config_dir), "--manufacturing-log", str(bench.log_path),
    ]  # fmt: skip
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=45, check=False
    )


def test_offline_flash_writes_the_encrypted_image_and_its_keys(
    bench: Bench, tmp_path: Path
) -> None:
    with boards(encrypted_board()) as [server]:
        result = offline_flash(bench, server, tmp_path)
        image, keys = nvs_region(server), keys_region(server)

    key = stored_key(bench)  # made by the command, as the agent would have
    assert 0 == result.returncode, result.stderr
    assert nvs_keys_partition(key) == keys
    assert credentials(DEVICE) == parse_nvs(decrypt_nvs(image, key)).strings("prov")
    assert "nvs_keys: nvs_keys at 0xf000 (image encrypted with its key)" in result.stdout
    assert [True] == [line["encrypted"] for line in bench.log_lines()]
    assert [] == [f for f in secret_forms(key) if f in (result.stdout + result.stderr).encode()]


async def test_a_board_flashed_offline_is_skipped_by_the_station_later(
    bench: Bench, tmp_path: Path
) -> None:
    """Offline and the agent share the stored key, so their images are the same bytes."""
    with boards(encrypted_board()) as [server]:
        offline = await asyncio.to_thread(offline_flash, bench, server, tmp_path)
        events = await flash_once(bench, server)

    assert 0 == offline.returncode, offline.stderr
    assert (True, "ok") == (events[-1].get("skipped"), events[-1]["status"])
