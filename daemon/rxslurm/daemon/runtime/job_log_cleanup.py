"""Removing a container's old holder job logs (``job-N.out``) from the runtime user's folder.

The folder is the runtime user's, so root never deletes there: like the reader
(runtime/job_output.py), a short script runs *as the runtime user* (``runas``, isolated Python,
a deadline). It opens the folder without following links and removes only entries that are
regular files of that user named ``job-<digits>.out``, whose job is not one to keep and is older
than the newest job rxd knows (a job submitted this moment, not yet in the ledger, keeps its
log). A symbolic link, a FIFO or a folder named like a log is left alone and listed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rxslurm.daemon.runtime.user_script import run_script, script_answer, script_argv
from rxslurm.slurm.runas import RunAs

CLEAN_TIMEOUT_S = 10.0

# Run as the runtime user by `python -I -S -c`, the standard library only. argv: folder, the job
# ids to keep (comma-separated), the newest job id rxd knows. stdout: one JSON line.
CLEANER = r"""
import json, os, re, stat, sys
folder, keep, newest = sys.argv[1], sys.argv[2], int(sys.argv[3])
keep = {int(k) for k in keep.split(",") if k}
removed, skipped = [], []
try:
    d = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
except OSError as e:
    print(json.dumps({"error": "its folder: " + os.strerror(e.errno)})); sys.exit(0)
for name in os.listdir(d):
    m = re.fullmatch(r"job-([0-9]{1,18})\.out", name, re.ASCII)
    if not m:
        continue
    job = int(m.group(1))
    if job in keep or job >= newest:
        continue
    try:
        info = os.stat(name, dir_fd=d, follow_symlinks=False)
    except OSError:
        continue
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        skipped.append(name); continue
    # The folder is this user's own: an entry swapped meanwhile for a link is unlinked itself,
    # never followed.
    try:
        os.unlink(name, dir_fd=d)
        removed.append(job)
    except FileNotFoundError:
        pass
    except OSError:
        skipped.append(name)
print(json.dumps({"removed": sorted(removed), "skipped": sorted(skipped)}))
"""


class CleanupError(Exception):
    """The cleaner could not run or refused; the message says why."""


@dataclass(frozen=True)
class Cleaned:
    removed: tuple[int, ...]  # the jobs whose logs went
    skipped: tuple[str, ...]  # entries named like a log that are not the user's regular files


def cleaner_argv(state_dir: str, keep: Collection[int], newest: int) -> list[str]:
    ids = ",".join(str(int(j)) for j in sorted(keep))
    return script_argv(CLEANER, state_dir, ids, str(int(newest)))


def remove_old_logs(
    state_dir: str,
    keep: Collection[int],
    newest: int,
    as_user: RunAs | None,
    timeout: float = CLEAN_TIMEOUT_S,
) -> Cleaned:
    """Remove ``job-N.out`` in ``state_dir`` for every N below ``newest`` not in ``keep``, as
    ``as_user`` (None: as this process, for tests)."""
    result = run_script(
        cleaner_argv(state_dir, keep, newest),
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
    if not (
        isinstance(removed, list)
        and isinstance(skipped, list)
        and all(isinstance(j, int) and not isinstance(j, bool) for j in removed)
        and all(isinstance(n, str) for n in skipped)
    ):
        raise CleanupError("cannot clean job logs: the cleaner's answer is malformed")
    return Cleaned(tuple(removed), tuple(skipped))
