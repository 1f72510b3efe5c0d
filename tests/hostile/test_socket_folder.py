"""Finding 13: root chmods its sockets 0666; a folder others can write would let them swap the
socket for a symlink first, and root would open any file to everyone."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.api.serve import StartupError, claim_socket_path, open_to_everyone
from tests.support.daemon import new_rxd, test_root

pytestmark = pytest.mark.root(reason="checks root's own folders")


@pytest.fixture
def root() -> Iterator[Path]:
    folder = test_root()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775, 0o757])
def test_a_socket_folder_others_can_write_is_refused(root: Path, mode: int) -> None:
    folder = root / "run"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(StartupError, match="must be owned by root and not group/world writable"):
        claim_socket_path(folder / "rxd.sock")


def test_a_socket_folder_owned_by_a_user_is_refused(root: Path) -> None:
    folder = root / "run"
    folder.mkdir(mode=0o755)
    os.chown(folder, 2001, 2001)
    with pytest.raises(StartupError, match="must be owned by root"):
        claim_socket_path(folder / "rxd.sock")


def test_a_socket_folder_that_is_a_symlink_is_refused(root: Path) -> None:
    (root / "elsewhere").mkdir(mode=0o755)
    (root / "run").symlink_to(root / "elsewhere")
    with pytest.raises(StartupError, match="is not a folder"):
        claim_socket_path(root / "run" / "rxd.sock")


def test_the_mode_is_set_on_the_socket_never_through_a_symlink(root: Path) -> None:
    victim = root / "victim"
    victim.write_text("root's\n")
    os.chmod(victim, 0o600)
    link = root / "rxd.sock"
    link.symlink_to(victim)
    with pytest.raises(StartupError, match="no longer the socket"):
        open_to_everyone(link)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    link.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(link))
        os.chmod(link, 0o600)
        open_to_everyone(link)
        assert stat.S_IMODE(link.lstat().st_mode) == 0o666


def test_rxd_refuses_to_start_on_a_world_writable_socket_folder() -> None:
    daemon = new_rxd()
    try:
        os.chmod(daemon.socket.parent, 0o1777)
        daemon.start(wait=False)
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
        assert "must be owned by root and not group/world writable" in daemon.log_text()
        assert not daemon.socket.exists()
    finally:
        daemon.remove_folders()
