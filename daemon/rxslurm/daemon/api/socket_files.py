"""The daemon's Unix sockets on disk: claiming the path and opening the socket to every user.

Shared by the API's socket (api/serve.py) and the exec socket (exec/server.py).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from rxslurm.daemon.folders import make_folder

log = logging.getLogger("rxslurm.daemon")


class StartupError(Exception):
    """rxd cannot start; the message says why."""


def claim_socket_path(path: Path) -> None:
    """Make `path` free for a new socket, or refuse.

    The folder must be root's alone (root chmods the socket in it: a folder others can write
    lets them swap the socket for a symlink first). A socket file left by a crashed rxd is
    removed; one a live rxd answers on is not. Anything at the path that is not a socket (a
    file, a planted symlink) is never removed.
    """
    make_folder(path.parent)
    check_socket_folder(path.parent)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot probe existing socket {path}: {exc}") from None
        log.info("removing stale socket", extra={"socket": str(path)})
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"another rxd is already serving on {path}")


def check_socket_folder(folder: Path) -> None:
    """The socket's folder: a real folder, owned by rxd's user (root), writable by no one else."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"socket folder {folder} is not a folder (a symlink?); refusing it")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StartupError(
            f"socket folder {folder} must be owned by root and not group/world writable"
        )


def open_to_everyone(path: Path) -> None:
    """chmod 0666 the socket just bound at `path`, never what a symlink there points to."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise StartupError(f"{path} is no longer the socket rxd bound; refusing to chmod it")
        # Through the descriptor: chmod of /proc/self/fd/N changes exactly the inode opened.
        os.chmod(f"/proc/self/fd/{fd}", 0o666)  # noqa: S103 - access is decided per caller
    finally:
        os.close(fd)
