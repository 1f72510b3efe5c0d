"""Removing a container's old logs from the runtime user's folder: the holder jobs' output
(``job-N.out``) and their services' (``job-N.service``, ``.service.1``, ``.service.dropped``),
Apptainer's own instance logs of those jobs
(``apptainer/instances/logs/<host>/<user>/rx-<project>-N.out|.err``), and the output of
detached commands (``exec-<id>.out``, its older part ``.out.1`` and ``.out.dropped``); and
keeping the instance logs of the jobs that stay under a cap.

The folder is the runtime user's, so root never deletes there: like the reader
(runtime/job_output.py), a short script runs *as the runtime user* (``runas``, isolated Python,
a deadline). It opens the folder, and each folder below it, without following links, and
removes only entries that are regular files of that user named as above, whose job is not one
to keep and is older than the newest job rxd knows (a job submitted this moment, not yet in the
ledger, keeps its logs). A detached command's output goes when its command is not one to keep
and the file was last written before rxd read the ledger (a command started since then keeps
it). A symbolic link, a FIFO or a folder named like a log is left alone and listed.

Apptainer appends to an instance's log for the instance's whole life (the files are opened
with O_APPEND), so a kept one over the cap is cut in place to its newest ``cap / 2`` bytes:
what Apptainer writes next lands after them, never past a hole. Output written while the cut
runs (between reading the tail and truncating) may be lost.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.protocol.commands import COMMAND_ID
from rxslurm.slurm.runas import RunAs

CLEAN_TIMEOUT_S = 10.0

# Run as the runtime user by `python -I -S -c`, the standard library only. argv: folder, the job
# ids to keep (comma-separated), the newest job id rxd knows; then optionally the detached
# commands to keep (comma-separated), the time rxd read the ledger (Unix seconds) and the cap of
# an instance log in bytes (0: none). stdout: one JSON line.
CLEANER = r"""
import json, os, re, stat, sys
folder, keep, newest = sys.argv[1], sys.argv[2], int(sys.argv[3])
keep = {int(k) for k in keep.split(",") if k}
more = len(sys.argv) > 4
keep_exec = set(sys.argv[4].split(",")) if more else set()
read_at = float(sys.argv[5]) if more else 0.0
cap = int(sys.argv[6]) if more else 0
removed, skipped, instance_logs, exec_logs, trimmed = [], [], [], [], []
DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
try:
    d = os.open(folder, DIR)
except OSError as e:
    print(json.dumps({"error": "its folder: " + os.strerror(e.errno)})); sys.exit(0)
def mine(name, at):
    try:
        info = os.stat(name, dir_fd=at, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        skipped.append(name); return None
    return info
def remove(name, at):
    # The folder is this user's own: an entry swapped meanwhile for a link is unlinked itself,
    # never followed.
    try:
        os.unlink(name, dir_fd=at); return True
    except FileNotFoundError:
        return False
    except OSError:
        skipped.append(name); return False
def trim(name, at, size):
    try:
        f = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=at)
    except OSError:
        skipped.append(name); return
    try:
        info = os.fstat(f)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            skipped.append(name); return
        tail = b""
        os.lseek(f, max(info.st_size - cap // 2, 0), os.SEEK_SET)
        while len(tail) < cap // 2:
            chunk = os.read(f, cap // 2 - len(tail))
            if not chunk:
                break
            tail += chunk
        os.ftruncate(f, 0)
        os.lseek(f, 0, os.SEEK_SET)
        os.write(f, tail)
        trimmed.append(name)
    finally:
        os.close(f)
for name in os.listdir(d):
    m = re.fullmatch(r"job-([0-9]{1,18})\.(out|service(\.1|\.dropped)?)", name, re.ASCII)
    if m:
        job = int(m.group(1))
        if job in keep or job >= newest or mine(name, d) is None:
            continue
        if remove(name, d) and job not in removed:
            removed.append(job)
        continue
    m = re.fullmatch(r"exec-([0-9a-f]{8})\.out(\.1|\.dropped)?", name, re.ASCII)
    if m and more and m.group(1) not in keep_exec:
        info = mine(name, d)
        if info is not None and info.st_mtime < read_at and remove(name, d):
            exec_logs.append(name)
def below(at, name):
    try:
        return os.open(name, DIR, dir_fd=at)
    except OSError:
        return None
logs = d
for part in ("apptainer", "instances", "logs"):
    logs = below(logs, part) if logs is not None else None
for host in (sorted(os.listdir(logs)) if logs is not None and more else []):
    h = below(logs, host)
    for user in (sorted(os.listdir(h)) if h is not None else []):
        u = below(h, user)
        for name in (sorted(os.listdir(u)) if u is not None else []):
            m = re.fullmatch(r"rx-[a-z0-9-]{1,64}-([0-9]{1,18})\.(out|err)", name, re.ASCII)
            if not m:
                continue
            job = int(m.group(1))
            info = mine(name, u)
            if info is None:
                continue
            if job not in keep and job < newest:
                if remove(name, u):
                    instance_logs.append(name)
            elif cap and info.st_size > cap:
                trim(name, u, info.st_size)
print(json.dumps({"removed": sorted(removed), "skipped": sorted(skipped),
                  "instance_logs": instance_logs, "exec_logs": sorted(exec_logs),
                  "trimmed": trimmed}))
"""


class CleanupError(Exception):
    """The cleaner could not run or refused; the message says why."""


# A kept instance log larger than this is cut to its newest half.
INSTANCE_LOG_CAP = 8 * 1024 * 1024


@dataclass(frozen=True)
class Cleaned:
    removed: tuple[int, ...]  # the jobs whose logs went
    skipped: tuple[str, ...]  # entries named like a log that are not the user's regular files
    instance_logs: tuple[str, ...] = ()  # Apptainer's instance logs removed
    exec_logs: tuple[str, ...] = ()  # detached commands' output removed
    trimmed: tuple[str, ...] = ()  # kept instance logs cut to the newest half of the cap


@dataclass(frozen=True)
class Others:
    """What the cleaner does besides the job logs: the detached commands whose output stays,
    when rxd read that from the ledger, and the cap of a kept instance log (0: none)."""

    keep_exec: frozenset[str]
    read_at: float
    cap: int = INSTANCE_LOG_CAP


def cleaner_argv(
    state_dir: str, keep: Collection[int], newest: int, others: Others | None = None
) -> list[str]:
    ids = ",".join(str(int(j)) for j in sorted(keep))
    extra: list[str] = []
    if others is not None:
        commands = sorted(others.keep_exec)
        if not all(COMMAND_ID.fullmatch(c) for c in commands):
            raise ValueError("a command id is 8 hexadecimal digits")
        extra = [",".join(commands), repr(float(others.read_at)), str(int(others.cap))]
    return script_argv(CLEANER, state_dir, ids, str(int(newest)), *extra)


def remove_old_logs(
    state_dir: str,
    keep: Collection[int],
    newest: int,
    as_user: RunAs | None,
    timeout: float = CLEAN_TIMEOUT_S,
    others: Others | None = None,
) -> Cleaned:
    """Remove ``job-N.out`` in ``state_dir`` for every N below ``newest`` not in ``keep``, as
    ``as_user`` (None: as this process, for tests); with ``others``, those jobs' instance logs
    and the output of detached commands not kept too, and cut kept instance logs to the cap."""
    result = run_script(
        cleaner_argv(state_dir, keep, newest, others),
        as_user=as_user,
        timeout=timeout,
        doing="cleaning job logs",
        name="cleaner",
        error=CleanupError,
    )
    return parse_cleaner_output(result.returncode, result.stdout, result.stderr)


def parse_cleaner_output(returncode: int, stdout: str, stderr: str = "") -> Cleaned:
    answer = script_answer(
        returncode, stdout, stderr, failed="cannot clean job logs", error=CleanupError
    )
    removed = answer.get("removed")
    skipped = answer.get("skipped")
    names = [answer.get(key, []) for key in ("instance_logs", "exec_logs", "trimmed")]
    if not (
        isinstance(removed, list)
        and isinstance(skipped, list)
        and all(isinstance(j, int) and not isinstance(j, bool) for j in removed)
        and all(isinstance(n, str) for n in skipped)
        and all(isinstance(group, list) for group in names)
        and all(isinstance(n, str) for group in names for n in group)
    ):
        raise CleanupError("cannot clean job logs: the cleaner's answer is malformed")
    instance_logs, exec_logs, trimmed = (tuple(group) for group in names)
    return Cleaned(tuple(removed), tuple(skipped), instance_logs, exec_logs, trimmed)
