"""Putting a new, empty overlay in place of a container's overlay (`rxctl reset`), the old one kept
as ``overlay.img.before-reset-<UTC time>`` until garbage collection removes it; as the runtime
user.

The new overlay is made first under a temporary name (runtime port ``create_overlay``), then a
constant script run *as the runtime user* swaps the names. It takes the overlay's lock
(``overlay.lock``, which the holder job holds for its life) without waiting, and a read lock on
the overlay image (Apptainer holds a write lock on an overlay it mounts writable), as the snapshot
copy does (runtime/overlay_snapshot.py): a job or an instance holding the overlay means "busy" and
nothing is changed. Under the lock it renames ``overlay.img`` to the backup name and the new file
to ``overlay.img``; a holder that starts meanwhile waits for the lock, so it never finds the
overlay missing. Everything is opened without following links, through the folder's descriptor.
"""

from __future__ import annotations

import re
import time

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

RESET_TIMEOUT_S = 30.0
BACKUP_PREFIX = "overlay.img.before-reset-"
NEW_NAME = re.compile(r"\.new-overlay-[0-9a-f]{8,32}\.img", re.ASCII)

# Run as the runtime user by `python -I -S -c`, the standard library only. argv: the container's
# folder, the new overlay's temporary name, the backup's name. stdout: one JSON line.
SCRIPT = r"""
import errno, fcntl, json, os, stat, struct, sys
folder, new, backup = sys.argv[1:4]
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
me = os.getuid()

def done(**fields):
    print(json.dumps(fields)); sys.exit(0)

try:
    d = os.open(folder, FLAGS | os.O_DIRECTORY)
    if os.fstat(d).st_uid != me:
        done(error="its folder is not the runtime user's")
    lock = os.open("overlay.lock",
                   os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                   0o600, dir_fd=d)
    if not stat.S_ISREG(os.fstat(lock).st_mode):
        done(error="overlay.lock is not a regular file")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        done(busy=True)
    old = os.open("overlay.img", FLAGS | os.O_NONBLOCK, dir_fd=d)
    info = os.fstat(old)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != me:
        done(error="overlay.img is not the runtime user's regular file")
    try:
        fcntl.fcntl(old, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            done(busy=True)
        raise
    fresh = os.stat(new, dir_fd=d, follow_symlinks=False)
    if not stat.S_ISREG(fresh.st_mode) or fresh.st_uid != me:
        done(error="the new overlay is not the runtime user's regular file")
    try:
        os.stat(backup, dir_fd=d, follow_symlinks=False)
        done(error=backup + " exists already")
    except FileNotFoundError:
        pass
    os.rename("overlay.img", backup, src_dir_fd=d, dst_dir_fd=d)
    try:
        os.rename(new, "overlay.img", src_dir_fd=d, dst_dir_fd=d)
    except OSError:
        # Never leave the container without an overlay: the old one goes back.
        os.rename(backup, "overlay.img", src_dir_fd=d, dst_dir_fd=d)
        raise
    os.fsync(d)
    done(backup=backup, bytes=info.st_blocks * 512)
except OSError as e:
    done(error=(e.filename + ": " if isinstance(e.filename, str) else "") + os.strerror(e.errno))
"""


class ResetError(Exception):
    """The swap could not run or refused; the message says why."""


class OverlayBusy(ResetError):
    """A job or an instance holds the overlay: nothing was changed."""


def backup_name(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{BACKUP_PREFIX}{stamp}"


def swap(state_dir: str, new: str, backup: str, as_user: RunAs | None) -> int:
    """Rename the overlay to ``backup`` and ``new`` to the overlay, under the overlay's locks;
    the old overlay's size on disk. OverlayBusy when a job or an instance holds it."""
    if not NEW_NAME.fullmatch(new) or not backup.startswith(BACKUP_PREFIX) or "/" in backup:
        raise ValueError("not a reset's file name")
    result = run_script(
        script_argv(SCRIPT, state_dir, new, backup),
        as_user=as_user,
        timeout=RESET_TIMEOUT_S,
        doing="the overlay reset",
        name="reset script",
        error=ResetError,
    )
    answer = script_answer(
        result.returncode, result.stdout, result.stderr, failed="cannot reset", error=ResetError
    )
    if answer.get("busy"):
        raise OverlayBusy("a job or an instance holds the overlay")
    size = answer.get("bytes")
    if answer.get("backup") != backup or not isinstance(size, int) or isinstance(size, bool):
        raise ResetError("cannot reset: the script's answer is malformed")
    return size
