"""fs_check: which filesystem holds a path, and refusing network ones for the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxslurm.daemon.ledger import fs_check
from rxslurm.daemon.ledger.fs_check import (
    NetworkFilesystemError,
    assert_local_filesystem,
    filesystem_type,
    is_network_filesystem,
)

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
25 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:40 / /shared rw,relatime shared:5 master:3 - nfs4 server:/export rw,vers=4.2
31 30 8:17 / /shared/local rw,relatime - ext4 /dev/sdb1 rw
32 22 0:41 / /mnt/my\040disk rw,relatime shared:7 - cifs //srv/share rw
33 22 0:42 / /sharedx rw,relatime shared:8 - xfs /dev/sdc1 rw
34 22 0:43 / /home/rxalice/remote rw,nosuid,nodev - fuse.sshfs rxalice@host: rw
35 22 0:44 / /over rw - ext4 /dev/sdd1 rw
36 35 0:45 / /over rw - lustre 10.0.0.1@tcp:/fs rw
37 22 0:46 / /odd\134name\011tab rw - gpfs gpfs0 rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return path


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/var/lib/rxslurm/ledger.db", "ext4"),
        ("/shared", "nfs4"),
        ("/shared/projects/ledger.db", "nfs4"),
        # A local disk mounted inside the NFS tree is local.
        ("/shared/local/ledger.db", "ext4"),
        # "/sharedx" starts with "/shared" but is not under it.
        ("/sharedx/ledger.db", "xfs"),
        ("/mnt/my disk/ledger.db", "cifs"),
        ("/mnt/my", "ext4"),
        ("/home/rxalice/remote/x", "fuse.sshfs"),
        # Two mounts on one point: the later one is on top.
        ("/over/ledger.db", "lustre"),
        ("/odd\\name\ttab/ledger.db", "gpfs"),
    ],
)
def test_filesystem_type_takes_the_longest_mount_point(
    mountinfo: Path, path: str, fstype: str
) -> None:
    assert filesystem_type(path, mountinfo) == fstype


def test_filesystem_type_follows_symlinks(mountinfo: Path, tmp_path: Path) -> None:
    link = tmp_path / "state"
    link.symlink_to("/shared/state")
    assert filesystem_type(link / "ledger.db", mountinfo) == "nfs4"


def test_nfs4_is_refused_with_path_and_type(mountinfo: Path) -> None:
    with pytest.raises(NetworkFilesystemError) as caught:
        assert_local_filesystem("/shared/rx/ledger.db", mountinfo)
    assert caught.value.path == "/shared/rx/ledger.db"
    assert caught.value.fstype == "nfs4"
    message = str(caught.value)
    assert "/shared/rx/ledger.db" in message
    assert "nfs4" in message
    assert "SQLite locking is unsafe" in message


def test_ext4_is_accepted(mountinfo: Path) -> None:
    assert assert_local_filesystem("/var/lib/rxslurm/ledger.db", mountinfo) == "ext4"
    assert assert_local_filesystem("/shared/local/ledger.db", mountinfo) == "ext4"


def test_the_module_mountinfo_is_read_at_call_time(
    mountinfo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs_check, "MOUNTINFO", mountinfo)
    with pytest.raises(NetworkFilesystemError):
        assert_local_filesystem("/mnt/my disk/x")


@pytest.mark.parametrize(
    "fstype",
    [
        "nfs",
        "nfs4",
        "NFS4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "fuse.ceph-fuse",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "panfs",
        "orangefs",
    ],
)
def test_network_filesystems(fstype: str) -> None:
    assert is_network_filesystem(fstype)


@pytest.mark.parametrize(
    "fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuse.lxcfs", "fuse"]
)
def test_local_filesystems(fstype: str) -> None:
    assert not is_network_filesystem(fstype)


def test_this_machine_tmp_path_has_a_type(tmp_path: Path) -> None:
    # The real /proc/self/mountinfo parses and some mount holds tmp_path.
    assert filesystem_type(tmp_path)
