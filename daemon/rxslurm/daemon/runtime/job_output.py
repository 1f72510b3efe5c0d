"""Reading a holder job's output (``job-N.out``, Slurm's ``--output``) from the runtime user's
folder, for ``rxctl logs``.

The file and its folder are the runtime user's: they (or anything running as them, the container
included) can put a symlink to ``/etc/shadow`` there, a FIFO, or a file of many gigabytes. So root
never opens it: a short reader runs *as the runtime user* (``runas``, a clean environment, a
deadline), opens the folder and the file without following links and without blocking, and hands
back at most ``max_bytes`` from an offset, or the end when no offset is given. What it read is
then made safe for a terminal here (text_checks), before anyone sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rxslurm.daemon.runtime.user_script import run_script, script_argv
from rxslurm.daemon.text_checks import safe_output
from rxslurm.slurm.runas import RunAs

# What one answer carries at most: enough for Apptainer's whole message, small enough for one
# JSON reply. `rxctl logs -f` asks again from where it stopped.
MAX_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0

# Run as the runtime user by `python -I -S -c`: the standard library only, nothing of rx-slurm
# (which need not be readable by them), no site folders, no environment variables. argv: folder,
# file name, offset (-1: the end), most bytes. stdout: one JSON line, then the bytes. The name
# may go down folders ("a/b/c.out", each opened without following links); a "*" folder is the
# first one (by name) that holds the rest.
READER = r"""
import errno, json, os, stat, sys
folder, name, offset, most = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def say(**head):
    sys.stdout.buffer.write(json.dumps(head).encode() + b"\n")
def refuse(what, e):
    link = e.errno in (errno.ELOOP, errno.ENOTDIR)
    say(kind="refused", why=what + (" is a symbolic link" if link else ": " + os.strerror(e.errno)))
    sys.exit(0)
try:
    d = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
except OSError as e:
    refuse("its folder", e)
def down(at, rest):
    if len(rest) == 1:
        return at, rest[0]
    head = rest[0]
    for sub in (sorted(os.listdir(at)) if head == "*" else [head]):
        try:
            fd = os.open(sub, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=at)
        except FileNotFoundError:
            continue
        except OSError as e:
            if head == "*":
                continue
            refuse(sub, e)
        found = down(fd, rest[1:])
        if found is None:
            continue
        if head != "*":
            return found
        try:
            os.stat(found[1], dir_fd=found[0], follow_symlinks=False)
            return found
        except OSError:
            continue
    return None
found = down(d, name.split("/"))
if found is None:
    say(kind="missing"); sys.exit(0)
d, name = found
try:
    f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                dir_fd=d)
except FileNotFoundError:
    say(kind="missing"); sys.exit(0)
except OSError as e:
    refuse(name, e)
info = os.fstat(f)
if not stat.S_ISREG(info.st_mode):
    say(kind="refused", why=name + " is not a regular file"); sys.exit(0)
if info.st_uid != os.getuid():
    say(kind="refused", why=name + " is not the runtime user's"); sys.exit(0)
size = info.st_size
start = max(size - most, 0) if offset < 0 else min(offset, size)
os.lseek(f, start, os.SEEK_SET)
data = b""
while len(data) < most:
    chunk = os.read(f, most - len(data))
    if not chunk:
        break
    data += chunk
# A character cut at the end waits for the next read instead of becoming U+FFFD.
for back in range(1, min(4, len(data) + 1)):
    byte = data[-back]
    if byte & 0xC0 == 0x80:
        continue
    if byte >= 0xC0 and (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4) > back:
        data = data[:-back]
    break
say(kind="text", size=max(size, start + len(data)), start=start, end=start + len(data))
sys.stdout.buffer.write(data)
"""


class OutputError(Exception):
    """The output could not be read; the message says why, for the caller."""


@dataclass(frozen=True)
class JobOutput:
    """A piece of a job's output file: bytes ``start`` to ``end`` of ``size``, as safe text."""

    text: str
    start: int
    end: int
    size: int
    missing: bool = False  # no such file (yet): the job has not written, or it was removed

    @property
    def cut(self) -> bool:
        """Whether the file holds more than this piece, before or after it."""
        return self.start > 0 or self.end < self.size


def output_name(job_id: int) -> str:
    return f"job-{int(job_id)}.out"


def reader_argv(
    state_dir: str, job_id: int, offset: int | None, max_bytes: int, name: str | None = None
) -> list[str]:
    """The reader's argv: the interpreter rxd runs on, isolated, with the constant script.
    ``name``: another output file of the folder than the job's (a detached command's)."""
    return script_argv(
        READER,
        state_dir,
        name or output_name(job_id),
        str(-1 if offset is None else int(offset)),
        str(int(max_bytes)),
    )


def read_output(
    state_dir: str,
    job_id: int,
    as_user: RunAs | None,
    offset: int | None = None,
    max_bytes: int = MAX_BYTES,
    timeout: float = READ_TIMEOUT_S,
    name: str | None = None,
) -> JobOutput:
    """Up to ``max_bytes`` of ``job-<job_id>.out`` in ``state_dir`` from ``offset`` (None: the
    last ``max_bytes``), read as ``as_user`` (None: as this process, for tests)."""
    if offset is not None and offset < 0:
        raise ValueError("offset must not be negative")
    argv = reader_argv(state_dir, job_id, offset, max_bytes, name)
    result = run_script(
        argv,
        as_user=as_user,
        timeout=timeout,
        doing="reading the job's output",
        name="reader",
        error=OutputError,
    )
    return parse_reader_output(result.returncode, result.stdout, result.stderr)


def parse_reader_output(returncode: int, stdout: str, stderr: str = "") -> JobOutput:
    """The reader's answer: its JSON head line, then the bytes (decoded by runas as UTF-8 with
    replacement), made safe for a terminal."""
    head_line, _, data = stdout.partition("\n")
    try:
        head = json.loads(head_line)
    except json.JSONDecodeError:
        head = None
    if returncode != 0 or not isinstance(head, dict):
        why = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"
        raise OutputError(f"cannot read the job's output: {safe_output(why)}")
    kind = head.get("kind")
    if kind == "missing":
        return JobOutput("", 0, 0, 0, missing=True)
    if kind == "refused":
        raise OutputError(f"refused to read the job's output: {safe_output(str(head.get('why')))}")
    numbers = [head.get(key) for key in ("start", "end", "size")]
    counts = [n for n in numbers if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    if kind != "text" or len(counts) != 3 or not counts[0] <= counts[1] <= counts[2]:
        raise OutputError("cannot read the job's output: the reader's answer is malformed")
    start, end, size = counts
    return JobOutput(safe_output(data), start, end, size)
