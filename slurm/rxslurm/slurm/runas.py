"""Run a command as another Linux user: argv only, a clean environment, never a shell.

rxd runs as root and acts for researchers, so every Slurm command that creates or changes a job
runs as the researcher it belongs to. The drop happens inside the forked child through
``subprocess``'s ``user=``/``group=``/``extra_groups=`` (CPython does setgroups, setregid and
setreuid between fork and exec in C); ``preexec_fn`` is never used because rxd is threaded and
async, where running Python code between fork and exec can deadlock.

The child's environment is rebuilt from nothing (``clean_env``): the daemon's own variables
(tokens, ``LD_PRELOAD``, a ``PATH`` with root-only folders, ...) never leak into a user's process.
``PATH`` is a fixed system path and deliberately does NOT take folders from the caller's
``PATH``: those may be writable by someone else or unreadable for the user. Programs that live
elsewhere are run by their absolute path (the Slurm adapter resolves its binaries itself), and a
caller that needs more passes ``env_extra``.

Nothing here is Slurm's: the daemon runs workspace work, image pulls and Apptainer as users
through it too. It lives in ``rxslurm.slurm`` because the Slurm adapter (``adapter``,
``step_signal``) needs it and the layer rule lets ``slurm`` import nothing of the daemon; the
daemon imports it from here. (``protocol`` is no home either: it holds what the CLI, the daemon
and the hooks agree on, stdlib only, not how root acts as someone else.)
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables copied from the daemon's environment when set: they tell Slurm's commands where the
# site keeps its configuration, and are not secrets.
PASS_THROUGH = ("SLURM_CONF", "TZ")


class RunAsError(ValueError):
    """An identity that cannot be resolved, or one rx-slurm refuses to act as."""


@dataclass(frozen=True)
class RunAs:
    """A Linux identity to act as. ``groups`` holds every group id, the primary one included."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str = ""

    def __post_init__(self) -> None:
        # Guards direct construction too, not only for_user(): a root child would undo the point
        # of dropping privileges.
        if self.uid == 0:
            raise RunAsError(f"refusing to act as root (user {self.user!r} has uid 0)")

    @classmethod
    def for_user(cls, name_or_uid: str | int) -> RunAs:
        """Resolve a user name or uid from the passwd and group databases; root is refused."""
        try:
            if isinstance(name_or_uid, int):
                entry = pwd.getpwuid(name_or_uid)
            else:
                entry = pwd.getpwnam(name_or_uid)
        except KeyError:
            raise RunAsError(f"no such user: {name_or_uid!r}") from None
        if entry.pw_uid == 0:
            raise RunAsError(f"refusing to act as root ({name_or_uid!r} resolves to uid 0)")
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
        # Primary group first, then the rest in a stable order, without repeats.
        ordered = (entry.pw_gid, *sorted(set(groups) - {entry.pw_gid}))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, ordered, entry.pw_dir)

    def group_names(self) -> tuple[str, ...]:
        names = []
        for gid in self.groups:
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.append(str(gid))
        return tuple(names)

    def home_dir(self) -> str:
        if self.home:
            return self.home
        try:
            return pwd.getpwuid(self.uid).pw_dir
        except KeyError:
            return "/"


def can_enter(path: str, who: RunAs) -> bool:
    """Whether ``who`` may search (x) every folder on the way to ``path``, judged from modes.

    ``os.access`` would answer for root (the daemon), not for the user, so the permission bits
    are checked by hand. ACLs are not considered; a folder they open is merely not chosen.
    """
    if not os.path.isabs(path):
        return False
    current = "/"
    parts = [p for p in os.path.normpath(path).split("/") if p]
    for part in ["", *parts]:
        current = os.path.join(current, part) if part else current
        try:
            st = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in who.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def clean_env(as_user: RunAs | None, env_extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a child gets: identity variables, a fixed PATH, a UTF-8 locale."""
    if as_user is None:
        entry = pwd.getpwuid(os.getuid())
        user, home = entry.pw_name, entry.pw_dir
    else:
        user, home = as_user.user, as_user.home_dir()
    env = {
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
    }
    for name in PASS_THROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    if env_extra:
        env.update(env_extra)
    return env


def default_cwd(as_user: RunAs | None) -> str:
    """The user's home when they may enter it, else ``/`` (a child must never sit in a folder
    it cannot access: Slurm records the submitter's cwd as the job's working directory)."""
    if as_user is None:
        return "/"
    home = as_user.home_dir()
    return home if can_enter(home, as_user) else "/"


def spawn(
    argv: Sequence[str],
    as_user: RunAs | None = None,
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    cwd: str | None = None,
    env_extra: Mapping[str, str] | None = None,
    text: bool = True,
) -> subprocess.Popen[Any]:
    """Start ``argv`` (never through a shell), optionally as ``as_user``, with a clean
    environment, in a new session (``kill_group`` ends it and every helper it forked).
    ``text=False``: its pipes are bytes (an archive streamed through them)."""
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    for arg in args:
        if "\0" in arg:
            raise ValueError(f"NUL byte in argument {arg!r}")
    return subprocess.Popen(  # noqa: S603 - argv list, no shell
        args,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd if cwd is not None else default_cwd(as_user),
        env=clean_env(as_user, env_extra),
        text=text,
        encoding="utf-8" if text else None,
        errors="replace" if text else None,
        close_fds=True,
        start_new_session=True,
        umask=0o022,
        # None for all three: Popen keeps the daemon's own identity.
        user=as_user.uid if as_user is not None else None,
        group=as_user.gid if as_user is not None else None,
        extra_groups=list(as_user.groups) if as_user is not None else None,
    )


def run(
    argv: Sequence[str],
    as_user: RunAs | None = None,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    timeout: float = 30.0,
    cwd: str | None = None,
    env_extra: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell), optionally as ``as_user``, and collect its output.

    ``as_user=None`` runs as the daemon itself, still with a clean environment. On time-out the
    whole process group is killed (the child leads a new session, so helpers it forked die too
    and cannot hold our pipes open) and ``subprocess.TimeoutExpired`` is raised. A program that
    cannot be started raises ``OSError`` as ``subprocess`` does.
    """
    proc = spawn(
        argv,
        as_user,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        cwd=cwd,
        env_extra=env_extra,
    )
    args = proc.args
    try:
        stdout, stderr = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(args, timeout, output=stdout, stderr=stderr) from exc
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the session ``spawn`` started: the process and everything it forked."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
