"""``broker-agent config set|merge|delete|get`` as a user runs it, against the real agent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from firmware_contracts.payloads import config_sha256
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "configs"
    path.mkdir()
    return path


async def cli(broker: Broker, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker_agent.cli",
        "config",
        *args,
        "--broker-url",
        broker.url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_set_from_stdin_then_get_prints_it(broker: Broker, config_dir: Path) -> None:
    async with running_agent(agent_settings(broker.url, config_dir)):
        code, out, _ = await cli(broker, "set", "dev-1", stdin=b'{"interval": 30}')
        got = await cli(broker, "get", "dev-1")
    sha = config_sha256({"interval": 30})
    assert (0, f"ok: dev-1 sha256 {sha}") == (code, out.strip())
    assert (0, {"interval": 30}) == (got[0], json.loads(got[1]))


async def test_merge_from_a_file(broker: Broker, config_dir: Path, tmp_path: Path) -> None:
    (config_dir / "dev-1.json").write_text('{"a": 1, "b": 2}')
    patch = tmp_path / "patch.json"
    patch.write_text('{"b": null, "c": 3}')
    async with running_agent(agent_settings(broker.url, config_dir)):
        code, _, _ = await cli(broker, "merge", "dev-1", str(patch))
    assert (0, {"a": 1, "c": 3}) == (code, json.loads((config_dir / "dev-1.json").read_text()))


async def test_delete_then_get_finds_nothing(broker: Broker, config_dir: Path) -> None:
    (config_dir / "dev-1.json").write_text('{"a": 1}')
    async with running_agent(agent_settings(broker.url, config_dir)):
        deleted = await cli(broker, "delete", "dev-1")
        code, _, err = await cli(broker, "get", "dev-1")
    assert (0, "ok: dev-1 deleted") == (deleted[0], deleted[1].strip())
    assert (1, True) == (code, err.startswith("error: unknown_device"))


async def test_schema_violation_exits_1_naming_the_path(broker: Broker, config_dir: Path) -> None:
    (config_dir / "_schema.json").write_text('{"properties": {"interval": {"minimum": 5}}}')
    async with running_agent(agent_settings(broker.url, config_dir)):
        code, _, err = await cli(broker, "set", "dev-1", stdin=b'{"interval": 1}')
    assert 1 == code
    assert err.startswith("error: schema_violation: $.interval:")


async def test_stale_if_sha256_exits_1_with_conflict(broker: Broker, config_dir: Path) -> None:
    (config_dir / "dev-1.json").write_text('{"a": 1}')
    async with running_agent(agent_settings(broker.url, config_dir)):
        code, _, err = await cli(broker, "set", "dev-1", "--if-sha256", "0" * 64, stdin=b'{"a": 2}')
    assert (1, True) == (code, err.startswith("error: conflict:"))
    assert config_sha256({"a": 1}) in err


async def test_if_sha256_null_refuses_an_existing_config(broker: Broker, config_dir: Path) -> None:
    (config_dir / "dev-1.json").write_text('{"a": 1}')
    async with running_agent(agent_settings(broker.url, config_dir)):
        code, _, err = await cli(broker, "set", "dev-1", "--if-sha256", "null", stdin=b"{}")
    assert (1, True) == (code, err.startswith("error: conflict:"))


async def test_input_that_is_not_json_exits_1_before_sending(broker: Broker) -> None:
    code, _, err = await cli(broker, "set", "dev-1", stdin=b'{"a": NaN}')
    assert (1, True) == (code, err.startswith("error: invalid_json:"))


async def test_bad_device_id_is_a_setup_error(broker: Broker) -> None:
    code, _, _ = await cli(broker, "delete", "Not/A/Device")
    assert 2 == code
