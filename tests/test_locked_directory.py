"""``files.locked_directory``: the one directory lock of credential issuing and NVS keys."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from broker_agent.files import locked_directory


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    order: list[str] = []
    second_started = threading.Event()

    def second() -> None:
        second_started.set()
        with locked_directory(directory):
            order.append("second in")

    with locked_directory(directory):
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(5)
        thread.join(0.3)  # it cannot get in while we hold the lock
        order.append("first out")
    thread.join(5)

    assert ["first out", "second in"] == order


def test_it_creates_the_directory_private_and_leaves_no_lock_file(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "secrets"
    with locked_directory(directory):
        pass
    assert 0o700 == stat.S_IMODE(directory.stat().st_mode)
    assert [] == list(directory.iterdir())
