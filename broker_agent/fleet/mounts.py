"""Which file system a directory lives on, from ``/proc/self/mountinfo``: inotify or polling.

inotify reports only changes made through this kernel. On a network file system (NFS, CephFS,
SMB, sshfs, 9p, virtiofs) a file written by another host changes nothing this kernel sees, so a
replica watching with inotify never notices it; only polling does (docs/multi-site.md, "A config
directory shared by replicas"). ``BROKER_AGENT_WATCH_MODE=auto`` polls exactly there.

mountinfo line (proc(5)): ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE
SOURCE SUPER_OPTIONS``; the mount point escapes space, tab, newline and ``\\`` as octal.
The directory's file system is the one mounted at the longest mount point that contains it;
of several mounts at one point the last listed is on top.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "ceph",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "afs",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "fuse.sshfs",
        "fuse.ceph-fuse",
        "fuse.glusterfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.juicefs",
        "fuse.gcsfuse",
    }
)

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str
    source: str

    @property
    def is_network(self) -> bool:
        return self.fs_type in NETWORK_FS_TYPES


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line of a mountinfo text, in order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            mount_point, fs_type, source = fields[4], fields[dash + 1], fields[dash + 2]
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(_unescape(mount_point), fs_type, _unescape(source)))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (an absolute, resolved path)."""
    found: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (found is None or len(point) >= len(found.mount_point.rstrip("/") or "/")):
            found = mount
    return found


def directory_mount(path: Path, mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount of ``path`` on this host; None when mountinfo cannot be read (not Linux)."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return mount_of(os.path.realpath(path), parse_mountinfo(text))
