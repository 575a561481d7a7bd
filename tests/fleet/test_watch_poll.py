"""Polling the config directory: when (mountinfo), and that it sees changes (a real watcher)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker_agent.fleet.mounts import Mount, mount_of, parse_mountinfo
from broker_agent.fleet.watcher import DirectoryWatcher
from firmware_contracts.payloads import ConfigEnvelope
from tests.support.agent import agent_settings, running_agent
from tests.support.broker import Broker
from tests.support.mqtt import observe
from tests.support.service import running

pytestmark = pytest.mark.timeout(60)

SAMPLE = """\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
30 22 0:40 / /srv/fleet rw,relatime shared:12 - nfs4 nas:/export/fleet rw,vers=4.2,addr=10.0.0.9
31 30 0:41 / /srv/fleet/local rw,relatime shared:13 - ext4 /dev/sdb1 rw
32 22 0:42 /configs /mnt/ceph rw,relatime - ceph 10.0.0.1:6789:/ rw,name=fleet
33 22 0:43 / /mnt/ssh\\040share rw,nosuid - fuse.sshfs me@host:/cfg rw,user_id=0
34 22 0:44 / /mnt/smb rw,relatime - cifs //srv/share rw,vers=3.1.1
35 22 0:45 / /mnt/over rw - tmpfs tmpfs rw
36 22 0:46 / /mnt/over rw - 9p hostshare rw,trans=virtio
not a mountinfo line
"""


def fs_of(path: str) -> str | None:
    mount = mount_of(path, parse_mountinfo(SAMPLE))
    return mount.fs_type if mount is not None else None


@pytest.mark.parametrize(
    ("path", "fs_type"),
    [
        ("/srv/fleet/configs", "nfs4"),
        ("/srv/fleet", "nfs4"),
        ("/srv/fleet/local/configs", "ext4"),  # a local mount inside the NFS one
        ("/srv/fleetwood", "overlay"),  # a prefix of the name is not a parent directory
        ("/mnt/ceph/x", "ceph"),
        ("/mnt/ssh share/configs", "fuse.sshfs"),  # \040 in mountinfo is a space
        ("/mnt/smb", "cifs"),
        ("/mnt/over/configs", "9p"),  # the later mount on one point is on top
        ("/home/me", "overlay"),
    ],
)
def test_the_deepest_mount_holding_a_path_is_found(path: str, fs_type: str) -> None:
    assert fs_type == fs_of(path)


def test_network_file_systems_are_recognised() -> None:
    network = {m.mount_point: m.is_network for m in parse_mountinfo(SAMPLE)}
    assert {
        "/": False,
        "/srv/fleet": True,
        "/srv/fleet/local": False,
        "/mnt/ceph": True,
        "/mnt/ssh share": True,
        "/mnt/smb": True,
        "/mnt/over": True,
    } == network


def test_malformed_lines_are_skipped() -> None:
    assert [Mount("/x", "nfs", "a:/b")] == parse_mountinfo(
        "garbage\n1 2 3:4 / /x rw - nfs a:/b rw\n1 2 3 - \n"
    )


def mountinfo_placing(tmp_path: Path, directory: Path, fs_type: str) -> Path:
    """A mountinfo file that mounts ``directory`` with ``fs_type`` over an ext4 root."""
    text = f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:50 / {directory} rw - {fs_type} src rw\n"
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


def watcher(directory: Path, names: list[set[str]], **options: object) -> DirectoryWatcher:
    return DirectoryWatcher(directory, names.append, lambda: None, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fs_type", "polls"), [("nfs4", True), ("ceph", True), ("xfs", False)])
def test_auto_polls_only_on_a_network_file_system(
    tmp_path: Path, fs_type: str, polls: bool
) -> None:
    mountinfo = mountinfo_placing(tmp_path, tmp_path / "configs", fs_type)
    (tmp_path / "configs").mkdir()
    assert polls == watcher(tmp_path / "configs", [], mountinfo=mountinfo).uses_polling()


@pytest.mark.parametrize(("mode", "polls"), [("poll", True), ("inotify", False)])
def test_an_explicit_mode_wins_over_the_file_system(tmp_path: Path, mode: str, polls: bool) -> None:
    mountinfo = mountinfo_placing(tmp_path, tmp_path, "nfs4" if mode == "inotify" else "ext4")
    assert polls == watcher(tmp_path, [], mode=mode, mountinfo=mountinfo).uses_polling()


def test_auto_uses_inotify_when_mountinfo_is_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "no-mountinfo"
    assert not watcher(tmp_path, [], mountinfo=missing).uses_polling()


async def test_poll_mode_reports_a_changed_file(tmp_path: Path) -> None:
    seen = asyncio.Event()

    def on_changes(names: set[str]) -> None:
        if "dev-1.json" in names:
            seen.set()

    polling = DirectoryWatcher(
        tmp_path, on_changes, lambda: None, mode="poll", poll_interval_s=0.05
    )
    async with running(polling.run(), polling.ready, name="poll-watcher"):
        assert polling.polling is True
        (tmp_path / "dev-1.json").write_text("{}")
        await asyncio.wait_for(seen.wait(), 10)


async def test_an_agent_in_poll_mode_publishes_an_edit(broker: Broker, tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    settings = agent_settings(
        broker.url, config_dir, http_listen="", watch_mode="poll", watch_poll_interval_s=0.1
    )
    topic = "iot/devices/dev-1/config"
    async with observe(broker.url, topic) as seen, running_agent(settings) as agent:
        assert agent.watcher.polling is True
        (config_dir / "dev-1.json").write_text(json.dumps({"interval": 7}))
        await seen.wait_for(lambda: topic in seen.latest)
    assert {"interval": 7} == ConfigEnvelope.model_validate_json(seen.latest[topic]).config
