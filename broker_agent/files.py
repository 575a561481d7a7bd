"""Replacing a file so that readers see the old or the new content, never a mix.

Used for everything that holds secrets or that another process reads while we write it:
issued credentials, provisioned images, the broker's password and ACL files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, gid: int | None = None) -> None:
    """Write ``data`` to ``path`` with ``mode`` (and group ``gid``), atomically and durably.

    A temp file in the same directory (created with O_EXCL, so with ``mode`` from the start),
    fsynced, renamed over ``path``; then the directory is fsynced so the rename survives a
    power cut.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp_name).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp_name).unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
