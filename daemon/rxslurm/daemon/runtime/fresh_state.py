"""Clearing a sleeping container's instance state (`rxctl start --fresh`), as the runtime user:
Apptainer's instance records (`apptainer/`) and the home rx-slurm binds into it (`home/`) in the
container's folder go, the overlay and the workspace stay; the next start recreates them.

The folder is the runtime user's, so root never deletes there: a constant script runs *as the
runtime user* (isolated Python, a deadline). It takes the overlay's lock (`overlay.lock`, which
the holder job holds for its life) without waiting: a job that holds it means "busy" and nothing
is removed. Each entry is first renamed to a hidden name (so a start never finds it half gone),
then removed through descriptors (`shutil.rmtree` with `dir_fd`), never following a link.
"""

from __future__ import annotations

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

FRESH_TIMEOUT_S = 120.0
# What goes: the instance records (APPTAINER_CONFIGDIR) and the bound home.
CLEARED = frozenset({"apptainer", "home"})

# Run as the runtime user by `python -I -S -c`, the standard library only. argv: the container's
# folder. stdout: one JSON line.
SCRIPT = r"""
import fcntl, json, os, secrets, shutil, stat, sys
folder = sys.argv[1]
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

def done(**fields):
    print(json.dumps(fields)); sys.exit(0)

try:
    d = os.open(folder, FLAGS | os.O_DIRECTORY)
    if os.fstat(d).st_uid != os.getuid():
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
    removed = []
    for name in ("apptainer", "home"):
        try:
            info = os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            continue
        hidden = ".fresh-" + name + "-" + secrets.token_hex(6)
        os.rename(name, hidden, src_dir_fd=d, dst_dir_fd=d)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(hidden, dir_fd=d)
        else:
            os.unlink(hidden, dir_fd=d)
        removed.append(name)
    done(removed=removed)
except OSError as e:
    done(error=(e.filename + ": " if isinstance(e.filename, str) else "") + os.strerror(e.errno))
"""


class FreshError(Exception):
    """The script could not run or refused; the message says why."""


class StateBusy(FreshError):
    """A job holds the container's overlay: nothing was removed."""


def clear_instance_state(
    state_dir: str, as_user: RunAs | None, timeout: float = FRESH_TIMEOUT_S
) -> list[str]:
    """Remove ``apptainer/`` and ``home/`` from ``state_dir`` as ``as_user`` (None: this
    process); which of them were there."""
    result = run_script(
        script_argv(SCRIPT, state_dir),
        as_user=as_user,
        timeout=timeout,
        doing="clearing the instance state",
        name="fresh script",
        error=FreshError,
    )
    answer = script_answer(
        result.returncode,
        result.stdout,
        result.stderr,
        failed="cannot clear the instance state",
        error=FreshError,
    )
    if answer.get("busy"):
        raise StateBusy("a job holds the container's overlay")
    removed = answer.get("removed")
    if not isinstance(removed, list) or not all(n in CLEARED for n in removed):
        raise FreshError("cannot clear the instance state: the script's answer is malformed")
    return [str(n) for n in removed]
