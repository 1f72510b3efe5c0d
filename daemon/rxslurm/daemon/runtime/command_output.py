"""A detached command's output file, written as the runtime user and kept small.

A detached command (``rxctl exec --detach``) is one ``srun --overlap`` step of its container's
job, whose output no client reads. Root never writes in the runtime user's folder, so a short
keeper runs *as that user* (``runas.spawn``, isolated Python, a clean environment): it creates
``exec-<id>.out`` in the container's state folder (never following a link, never reusing a
file that is there), starts the step with its stdout and stderr into a pipe, and copies what
comes into the file. When the file passes ``cap`` bytes it becomes ``exec-<id>.out.1`` (an
older one goes) and a new file starts, so one command never holds more than twice ``cap`` on
disk (``cap``: rxd.toml's ``containers.output_cap_mb``); when an older part goes,
``exec-<id>.out.dropped`` (empty) says so, for ``rxctl logs``. srun's lines about ended tasks
are dropped, as in an exec session. On its stdout the keeper tells rxd one JSON line when the
step started and one when it ended, with the step's exit status.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from rxslurm.daemon.runtime.user_script import script_argv
from rxslurm.protocol.commands import COMMAND_ID
from rxslurm.slurm.runas import RunAs, spawn
from rxslurm.slurm.step_signal import SRUN_TASK_END_PATTERN

# Each detached command's output file holds at most this much, plus its one older part, unless
# rxd.toml says otherwise (containers.output_cap_mb).
OUTPUT_CAP = 8 * 1024 * 1024

# argv: folder, file name, cap, the pattern of srun's task-end lines (dropped, as an exec
# session drops them: the exit status says the same), "--", the step's argv. stdout: JSON lines
# for rxd.
KEEPER = r"""
import json, os, re, subprocess, sys
folder, name, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
task_end = re.compile(sys.argv[4].encode())
step = sys.argv[6:]
def say(**msg):
    try:
        sys.stdout.write(json.dumps(msg) + "\n"); sys.stdout.flush()
    except OSError:
        pass  # rxd went away: the command and its file go on
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
# O_NONBLOCK: a FIFO at the marker's name (nobody reading) must not hold the keeper in open().
MARK = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
try:
    d = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    out = os.open(name, FLAGS, 0o640, dir_fd=d)
except OSError as e:
    say(error="cannot create " + name + ": " + os.strerror(e.errno)); sys.exit(0)
try:
    proc = subprocess.Popen(step, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd="/", close_fds=True)
except OSError as e:
    os.write(out, ("cannot start the step: " + str(e) + "\n").encode())
    say(error="cannot start the step: " + str(e)); sys.exit(0)
say(started=proc.pid)
written = 0
while True:
    chunk = os.read(proc.stdout.fileno(), 65536)
    if not chunk:
        break
    chunk = task_end.sub(b"", chunk)
    while chunk and out is not None:
        if written >= cap:
            os.close(out); out = None
            try:
                # An older part goes: name.dropped tells `rxctl logs` that output was lost.
                os.stat(name + ".1", dir_fd=d, follow_symlinks=False)
                os.close(os.open(name + ".dropped", MARK, 0o640, dir_fd=d))
            except OSError:
                pass
            try:
                os.rename(name, name + ".1", src_dir_fd=d, dst_dir_fd=d)
                out = os.open(name, FLAGS, 0o640, dir_fd=d)
                written = 0
            except OSError:
                break  # someone else's doing in this folder: stop writing, keep reading
        piece, chunk = chunk[: cap - written], chunk[cap - written :]
        try:
            written += os.write(out, piece)
        except OSError:
            written += len(piece)  # a full disk loses output, never the command
code = proc.wait()
say(exit=128 - code if code < 0 else code)
"""


def output_name(command_id: str) -> str:
    if not COMMAND_ID.fullmatch(command_id):
        raise ValueError(f"invalid command id {command_id!r}")
    return f"exec-{command_id}.out"


def keeper_argv(state_dir: str, command_id: str, step: Sequence[str], cap: int) -> list[str]:
    return script_argv(
        KEEPER,
        state_dir,
        output_name(command_id),
        str(int(cap)),
        SRUN_TASK_END_PATTERN,
        "--",
        *step,
    )


def start_keeper(
    state_dir: str,
    command_id: str,
    step: Sequence[str],
    as_user: RunAs | None,
    env: dict[str, str],
    cap: int = OUTPUT_CAP,
) -> subprocess.Popen[str]:
    """Start the keeper (and through it the step) as ``as_user`` (None: as this process, for
    tests), in a session of its own: it is tied to no client and no terminal, so no terminal's
    signal reaches it."""
    return spawn(
        keeper_argv(state_dir, command_id, step, cap),
        as_user,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env_extra=env,
    )
