"""``python -m broker_agent.simulator`` with the flash, table and hot-plug options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from esptool import cmds

from broker_agent.simulator import MB
from broker_agent.simulator.__main__ import main
from firmware_contracts.partition_table import find_nvs_partition, parse_partition_table
from tests.simulator.sessions import read_table

pytestmark = pytest.mark.timeout(60)


@contextmanager
def simulator(*args: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker_agent.simulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def next_line(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    return proc.stdout.readline().split()


def test_erased_1mb_board_from_the_command_line() -> None:
    with simulator("--flash-size", "1MB", "--erased") as proc:
        url = next_line(proc)[0]
        with cmds.detect_chip(url, connect_attempts=1) as esp:
            cmds.attach_flash(esp)
            assert "1MB" == cmds.detect_flash_size(esp)
        assert b"\xff" * 0xC00 == read_table(url)


def test_nvs_past_end_table_from_the_command_line_fits_the_flash_size() -> None:
    with simulator("--flash-size", "2MB", "--table", "nvs-past-end") as proc:
        nvs = find_nvs_partition(parse_partition_table(read_table(next_line(proc)[0])))

    assert nvs.offset < 2 * MB < nvs.offset + nvs.size


def test_replug_every_unplugs_and_replugs_at_the_same_url() -> None:
    with simulator("--replug-every", "0.2") as proc:
        plugged = next_line(proc)
        assert [plugged[0], "unplugged"] == next_line(proc)
        assert plugged == next_line(proc)


def test_erased_with_a_table_variant_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--erased", "--table", "no-nvs"])

    assert 2 == caught.value.code
