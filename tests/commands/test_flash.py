"""`broker-agent flash` as a user runs it: a real process, a simulated board, its exit status."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_agent.broker.process import free_port
from broker_agent.simulator import BoardConfig, BoardServer, SimulatedBoard
from broker_agent.station.ports import scan_ports
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import PROJECT, Broker
from tests.support.nvs_parser import parse_nvs

pytestmark = pytest.mark.timeout(60)

MAC = "24:0a:c4:12:34:56"
NVS_OFFSET, NVS_SIZE = 0x9000, 0x5000
FLEET = {"token_url": "https://auth.example.invalid/token", "base_url": "https://api.invalid/"}
KITCHEN = {"client_id": "iotdevice-kitchen-01", "client_secret": "KITCHEN-SECRET-z9y8x7"}
EXPECTED = {"device_key": "kitchen-01", **FLEET, **KITCHEN}


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    secrets_dir, config_dir = tmp_path / "secrets", tmp_path / "configs"
    secrets_dir.mkdir()
    config_dir.mkdir()
    (secrets_dir / "_fleet.json").write_text(json.dumps(FLEET))
    (secrets_dir / "kitchen-01.json").write_text(json.dumps(KITCHEN))
    return {"secrets": secrets_dir, "configs": config_dir, "log": tmp_path / "mlog.jsonl"}


@pytest.fixture
def board() -> Iterator[BoardServer]:
    with BoardServer(SimulatedBoard(BoardConfig(mac=MAC))) as server:
        yield server


def flash_args(device_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "broker_agent.cli", "flash", device_id, *extra]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_AGENT_")}
    env["PYTHONPATH"] = str(PROJECT)
    env["BROKER_AGENT_LOG_FORMAT"] = "json"
    return env


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=45, check=False
    )


def offline_args(device_id: str, port: str, dirs: dict[str, Path]) -> list[str]:
    return flash_args(
        device_id,
        "--port", port,
        "--offline",
        "--secrets-dir", str(dirs["secrets"]),
        "--config-dir", str(dirs["configs"]),
        "--manufacturing-log", str(dirs["log"]),
        "--baud", "921600",
    )  # fmt: skip


def nvs_region(server: BoardServer) -> bytes:
    return bytes(server.board.flash[NVS_OFFSET : NVS_OFFSET + NVS_SIZE])


def test_offline_success_exits_0_and_names_chip_mac_partition_md5(
    board: BoardServer, dirs: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(offline_args("kitchen-01", board.url, dirs), tmp_path)

    image = nvs_region(board)
    md5 = hashlib.md5(image).hexdigest()
    assert 0 == result.returncode, result.stderr
    assert EXPECTED == parse_nvs(image).strings("prov")
    lines = result.stdout.splitlines()
    assert f"chip: ESP32  mac: {MAC}" in lines
    assert "partition: nvs at 0x9000, 20480 bytes" in lines
    assert f"md5: {md5}" in lines
    phases = [line.split()[0] for line in lines if line.endswith("%")]  # plain, not a TTY
    assert [
        "connecting",
        "reading_partition_table",
        "fetching_nvs",
        "writing",
        "verifying",
        "done",
    ] == phases
    assert "done                     100%" in lines
    [record] = [json.loads(line) for line in dirs["log"].read_text().splitlines()]
    assert ("kitchen-01", "ok", md5, MAC) == (
        record["device_id"],
        record["result"],
        record["md5"],
        record["mac"],
    )


def test_a_job_error_exits_1_with_its_code(
    board: BoardServer, dirs: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(offline_args("ghost-99", board.url, dirs), tmp_path)

    assert 1 == result.returncode
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "  "))]
    assert errors[0].startswith("error: provisioning_failed: ")
    assert errors[1].startswith("  cause: unknown_device: ")
    assert b"\xff" * NVS_SIZE == nvs_region(board)
    assert "provisioning_failed" == json.loads(dirs["log"].read_text())["error_code"]


def test_without_a_broker_url_or_offline_it_exits_2_before_touching_the_board(
    board: BoardServer, tmp_path: Path
) -> None:
    result = run_cli(flash_args("kitchen-01", "--port", board.url), tmp_path)

    assert 2 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines())
    assert "needs a broker" in result.stderr and "--offline" in result.stderr
    assert 0 == board.board.connections


def test_usage_errors_exit_2(board: BoardServer, tmp_path: Path) -> None:
    bad_device = run_cli(flash_args("Kitchen 01", "--port", board.url, "--offline"), tmp_path)
    bad_baud = run_cli(flash_args("kitchen-01", "--port", board.url, "--baud", "12"), tmp_path)
    no_secrets = run_cli(
        flash_args("kitchen-01", "--port", board.url, "--offline", "--secrets-dir", "/nonexistent"),
        tmp_path,
    )

    no_broker = run_cli(
        flash_args(
            "kitchen-01", "--port", board.url, "--broker-url", f"mqtt://127.0.0.1:{free_port()}"
        ),
        tmp_path,
    )

    results = (bad_device, bad_baud, no_secrets, no_broker)
    assert [2, 2, 2, 2] == [r.returncode for r in results]
    assert "device_id" in bad_device.stderr
    assert "--baud" in bad_baud.stderr
    assert "/nonexistent" in no_secrets.stderr
    assert "cannot use the broker" in no_broker.stderr
    assert "" == no_broker.stdout  # nothing started
    assert 0 == board.board.connections


@pytest.mark.skipif(bool(scan_ports().candidates), reason="a real board is attached")
def test_no_port_and_no_candidate_exits_1_port_required(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(
        flash_args("kitchen-01", "--offline", "--secrets-dir", str(dirs["secrets"])), tmp_path
    )

    assert 1 == result.returncode
    assert result.stderr.startswith("error: port_required: ")


async def test_online_the_image_comes_from_the_agent(
    broker: Broker, board: BoardServer, dirs: dict[str, Path], tmp_path: Path
) -> None:
    args = flash_args(
        "kitchen-01",
        "--port", board.url,
        "--broker-url", broker.url,
        "--station-id", "cli-bench",
        "--manufacturing-log", str(dirs["log"]),
    )  # fmt: skip

    settings = agent_settings(broker.url, dirs["configs"], dirs["secrets"])
    async with running_agent(settings):
        process = await asyncio.create_subprocess_exec(
            *args,
            env=cli_env(),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        raw_out, raw_err = await asyncio.wait_for(process.communicate(), 45)
        assert process.returncode is not None
        code, out, err = process.returncode, raw_out.decode(), raw_err.decode()

    assert 0 == code, err
    assert EXPECTED == parse_nvs(nvs_region(board)).strings("prov")
    assert f"md5: {hashlib.md5(nvs_region(board)).hexdigest()}" in out.splitlines()


def test_a_board_holding_its_image_is_not_rewritten_unless_forced(
    board: BoardServer, dirs: dict[str, Path], tmp_path: Path
) -> None:
    first = run_cli(offline_args("kitchen-01", board.url, dirs), tmp_path)
    again = run_cli(offline_args("kitchen-01", board.url, dirs), tmp_path)
    forced = run_cli([*offline_args("kitchen-01", board.url, dirs), "--force"], tmp_path)

    assert [0, 0, 0] == [run.returncode for run in (first, again, forced)]
    assert "already held this image" in again.stdout
    assert "written and verified" in forced.stdout
    lines = [json.loads(line) for line in dirs["log"].read_text().splitlines()]
    assert [False, True, False] == [line["skipped"] for line in lines]
    assert EXPECTED == parse_nvs(nvs_region(board)).strings("prov")
