"""``read_regular_file``: the one reader of operators' files reads regular files only, never
blocks, and tells a missing entry from one it will not read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from broker_agent.errors import FileTooLarge, UnreadableFile
from broker_agent.files import file_signature, read_regular_file

pytestmark = pytest.mark.timeout(10)  # a FIFO opened for reading the plain way would hang


def refusal(path: Path, inside: Path | None = None) -> str:
    with pytest.raises(UnreadableFile) as info:
        read_regular_file(path, 1024, inside=inside)
    return info.value.reason


def test_a_regular_file_is_read_with_its_stat(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'{"a": 1}')
    raw, info = read_regular_file(path, 1024)
    assert (b'{"a": 1}', 8, True) == (raw, info.st_size, stat.S_ISREG(info.st_mode))


def test_exactly_the_limit_is_read_and_one_byte_more_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 1024)
    assert 1024 == len(read_regular_file(path, 1024)[0])
    path.write_bytes(b"x" * 1025)
    with pytest.raises(FileTooLarge) as info:
        read_regular_file(path, 1024)
    assert (1025, 1024) == (info.value.size, info.value.limit)


def test_no_entry_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "gone.json", 1024)


def test_a_dangling_symlink_is_unreadable_not_missing(tmp_path: Path) -> None:
    (tmp_path / "a.json").symlink_to(tmp_path / "gone.json")
    assert "is a dangling symlink" in refusal(tmp_path / "a.json")


def test_a_symlink_loop_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.json").symlink_to("b.json")
    (tmp_path / "b.json").symlink_to("a.json")
    assert "cannot be followed" in refusal(tmp_path / "a.json")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "a.json")
    assert "is a FIFO, not a regular file" == refusal(tmp_path / "a.json")


def test_a_symlink_to_a_fifo_inside_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "a.json").symlink_to("pipe")
    assert "is a symlink to a FIFO, not a regular file" == refusal(tmp_path / "a.json")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").mkdir()
    assert "is a directory, not a regular file" == refusal(tmp_path / "a.json")


def test_a_device_node_is_refused(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "a.json", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
    except PermissionError:
        pytest.skip("creating device nodes needs CAP_MKNOD")
    assert "is a character device, not a regular file" == refusal(tmp_path / "a.json")


def test_symlinks_are_followed_only_inside(tmp_path: Path) -> None:
    configs, outside = tmp_path / "configs", tmp_path / "outside"
    (configs / "sub").mkdir(parents=True)
    outside.mkdir()
    (configs / "sub" / "real.data").write_bytes(b"{}")
    (outside / "real.data").write_bytes(b"{}")
    (configs / "in.json").symlink_to("sub/real.data")
    (configs / "out.json").symlink_to(outside / "real.data")
    (configs / "dev.json").symlink_to("/dev/null")
    assert b"{}" == read_regular_file(configs / "in.json", 1024, inside=configs)[0]
    assert "outside its directory" in refusal(configs / "out.json")
    assert "outside its directory" in refusal(configs / "dev.json")
    # ``inside`` may be wider than the file's own directory, and is compared by real path
    (tmp_path / "alias").symlink_to(tmp_path)
    assert b"{}" == read_regular_file(configs / "out.json", 1024, inside=tmp_path / "alias")[0]


def test_a_retargeted_symlink_has_a_new_signature(tmp_path: Path) -> None:
    (tmp_path / "a.data").write_bytes(b"{}")
    (tmp_path / "b.data").write_bytes(b"[]")
    (tmp_path / "x.json").symlink_to("a.data")
    before = file_signature(tmp_path / "x.json")
    (tmp_path / "x.tmp").symlink_to("b.data")
    (tmp_path / "x.tmp").replace(tmp_path / "x.json")
    assert before != file_signature(tmp_path / "x.json")
