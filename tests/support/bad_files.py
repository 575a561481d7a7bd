"""The corpus of bad config files (issue 9, contract 6.5): each kind, how to put it in place of
a config file, the event code it must get, and a phrase its message must contain.

Each maker replaces ``path`` the way an editor or a deploy would (a rename over it), so a
watcher sees one change; ``outside`` is a directory beside the config directory.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path


def replace_with_text(text: str) -> Callable[[Path, Path], None]:
    def make(path: Path, _: Path) -> None:
        temp = path.with_name(".incoming.tmp")
        temp.write_text(text, encoding="utf-8")
        temp.replace(path)

    return make


def replace_with_fifo(path: Path, _: Path) -> None:
    temp = path.with_name(".incoming.tmp")
    os.mkfifo(temp)
    temp.replace(path)


def replace_with_socket(path: Path, _: Path) -> None:
    temp = path.with_name(".incoming.tmp")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(temp))  # the file stays after the socket is closed
    temp.replace(path)


def replace_with_symlink_outside(path: Path, outside: Path) -> None:
    target = outside / "elsewhere.json"
    target.write_text(json.dumps({"interval": 99}))
    temp = path.with_name(".incoming.tmp")
    temp.symlink_to(target)
    temp.replace(path)


def replace_with_dangling_symlink(path: Path, _: Path) -> None:
    temp = path.with_name(".incoming.tmp")
    temp.symlink_to(path.with_name("no-such-file.data"))
    temp.replace(path)


def replace_with_directory(path: Path, _: Path) -> None:
    path.unlink()
    path.mkdir()


HUGE_INT = "1" + "0" * 4400

BAD_FILES: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    # kind: (how to make it, code, part of the message)
    "fifo": (replace_with_fifo, "unreadable", "is a FIFO"),
    "socket": (replace_with_socket, "unreadable", "is a socket"),
    "directory": (replace_with_directory, "unreadable", "is a directory"),
    "symlink-outside": (replace_with_symlink_outside, "unreadable", "outside its directory"),
    "dangling-symlink": (replace_with_dangling_symlink, "unreadable", "dangling symlink"),
    "nan": (replace_with_text('{"interval": NaN}'), "invalid_json", "NaN"),
    "infinity": (replace_with_text('{"interval": -Infinity}'), "invalid_json", "Infinity"),
    "overflow": (replace_with_text('{"interval": 1e400}'), "invalid_json", "overflows"),
    "huge-int": (replace_with_text('{"interval": ' + HUGE_INT + "}"), "invalid_json", "4,300"),
    "surrogate-value": (replace_with_text('{"name": "\\ud800"}'), "invalid_json", "surrogate"),
    "surrogate-key": (replace_with_text('{"\\udc00": 1}'), "invalid_json", "surrogate"),
}
