"""Refuse to keep the ledger on a network filesystem.

SQLite relies on POSIX advisory locks and, in WAL mode, on a shared-memory index next to the
database; over NFS, SMB, Lustre and friends those are missing, emulated or not coherent between
hosts, so two writers can corrupt the ledger. See https://www.sqlite.org/wal.html and
https://www.sqlite.org/howtocorrupt.html#_filesystems_with_broken_or_missing_lock_implementations.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Module-level so tests can point it at a fake table; read at call time, not at import.
MOUNTINFO = Path("/proc/self/mountinfo")

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "9p",
        "afs",
        "coda",
        "panfs",
        "orangefs",
        "pvfs2",
        "wekafs",
        # Shared-disk cluster filesystems: the same file is open on several hosts.
        "gfs2",
        "ocfs2",
    }
)

# Subtypes of fuse.<name> that reach another machine.
NETWORK_FUSE = frozenset(
    {
        "sshfs",
        "glusterfs",
        "ceph-fuse",
        "ceph",
        "s3fs",
        "gcsfuse",
        "rclone",
        "juicefs",
        "davfs2",
        "lustre",
        "beegfs",
    }
)

_ESCAPE = re.compile(r"\\([0-7]{3})")


class NetworkFilesystemError(RuntimeError):
    """The path lives on a filesystem where SQLite's locking cannot be trusted."""

    def __init__(self, path: str | os.PathLike[str], fstype: str) -> None:
        self.path = os.fspath(path)
        self.fstype = fstype
        super().__init__(
            f"{self.path} is on a network filesystem ({fstype}); SQLite locking is unsafe there, "
            "so the ledger must live on a local disk"
        )


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount paths as \040 \011 \012 \134.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts(mountinfo: Path) -> list[tuple[str, str]]:
    """(mount point, fstype) for each line, in mount order."""
    mounts = []
    for line in mountinfo.read_text().splitlines():
        # "36 35 98:0 /root /mnt/point rw,noatime shared:1 - ext4 /dev/sda1 rw": a variable
        # number of optional fields ends at the lone "-".
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 5 or not right:
            continue
        mounts.append((_unescape(fields[4]), right.split(" ")[0]))
    return mounts


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type(path: str | os.PathLike[str], mountinfo: Path | None = None) -> str:
    """The fstype of the mount holding `path` (after resolving symlinks), e.g. "ext4" or "nfs4"."""
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for mount_point, fstype in _mounts(mountinfo or MOUNTINFO):
        # `>=`: a later mount on the same point hides the earlier one.
        if _contains(mount_point, real) and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fstype)
    if best is None:
        raise ValueError(f"no mount in {mountinfo or MOUNTINFO} contains {real}")
    return best[1]


def is_network_filesystem(fstype: str) -> bool:
    fstype = fstype.lower()
    if fstype in NETWORK_FILESYSTEMS:
        return True
    # "nfs4" and friends are caught above; "fuse.sshfs" and "fuse.glusterfs" by their subtype.
    kind, _, subtype = fstype.partition(".")
    return kind == "fuse" and subtype in NETWORK_FUSE


def assert_local_filesystem(path: str | os.PathLike[str], mountinfo: Path | None = None) -> str:
    """Return the fstype of `path`, or raise NetworkFilesystemError if it is a network one."""
    fstype = filesystem_type(path, mountinfo)
    if is_network_filesystem(fstype):
        raise NetworkFilesystemError(path, fstype)
    return fstype
