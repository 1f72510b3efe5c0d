"""The step path's launcher: a command of an exec step, started in a process group of its own
inside the container, and the signals meant for it delivered to that group only.

Why: a Slurm signal to an exec step (`scancel --signal`, srun's forwarding, a pty's ^C to the
step's foreground group) reaches every process of the step, Apptainer's runtime parent of
`apptainer exec instance://` included; it does not handle them, ends, and takes the command with
it before a trap runs. So the step runs this launcher, and a signal reaches it another way: a
second short step in the same instance runs the launcher's `signal` mode, which finds the
launcher by the step's name (its own user's processes, in the instance's PID namespace) and
signals it; the launcher passes the signal to the command's group (INT and QUIT, as a terminal's
keys, to the terminal's foreground group in a terminal session), and after TERM or HUP kills the
group KILL_AFTER_S later, as Slurm's KillWait would. In a terminal session the command's group
is the terminal's foreground group, so the pty's ^C reaches it and not Apptainer's process.

Standard library only, one file: rxd passes this file's text to the container's `python3 -I -S
-B -c` (nothing of the host is mounted for it). The exec agent shares its helpers. It runs
wherever the agent does, on Python 3.8 too (Ubuntu 20.04's, the base of many CUDA images): nothing
newer (no str.removeprefix) may be used here.

    launcher run NAME [--tty] -- CMD ARGS...    run CMD; exit with its status (128+N: signal N)
    launcher signal NAME SIG                    signal NAME's launcher (0), or none found (1)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

# As Slurm's KillWait: a command told to end (TERM, HUP) is killed this long after.
KILL_AFTER_S = 30
# What `apptainer exec` exits with when it cannot start the command.
START_FAILED_STATUS = 255
# The signals a launcher passes on; INT and QUIT as a terminal's keys.
FORWARDED = ("INT", "QUIT", "TERM", "HUP", "USR1", "USR2")
KEYS = ("INT", "QUIT")
# A signal may come before the launcher has started its command (a quick Ctrl-C).
FIND_TIMEOUT_S = 10.0
FIND_POLL_S = 0.05


def default_signals() -> None:  # pragma: no cover - runs in the child
    """A command starts as from a terminal, with SIGINT and SIGQUIT at their defaults, whatever
    its parent inherited: a signal ignored at a shell's start cannot be trapped (POSIX), and a
    job started in the background of a non-interactive shell has both ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def exit_status(returncode: int) -> int:
    """A Popen returncode as a shell's status: 128+N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def start_failure(exc: OSError, argv0: str, cwd: str | None) -> str:
    """What `apptainer exec` says of a command it cannot start, for the same cause."""
    if isinstance(exc, FileNotFoundError):
        if "/" not in argv0:
            return f'"{argv0}": executable file not found in $PATH'
        where = os.path.join(cwd or os.getcwd(), argv0)
        return f"stat {os.path.normpath(where)}: no such file or directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _own_group_in_front() -> None:  # pragma: no cover - runs in the child
    """The command's group leads the terminal (as a job-control shell puts a job in front), so
    the terminal's keys reach it and not Apptainer's process."""
    default_signals()
    os.setpgid(0, 0)
    with contextlib.suppress(OSError):
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, os.getpgrp())
        finally:
            signal.signal(signal.SIGTTOU, old)


def _own_group() -> None:  # pragma: no cover - runs in the child
    default_signals()
    os.setpgid(0, 0)


class Launcher:
    def __init__(self, argv: list[str], tty: bool) -> None:
        self.argv = argv
        self.tty = tty
        self.group = 0
        self.kill_armed = False
        # Signals that came after the command started but before Popen returned its pid.
        self.early: list[int] = []

    def run(self) -> int:
        # Handlers first: `signal` mode signals a launcher only once it has a child.
        for name in FORWARDED:
            signal.signal(getattr(signal, "SIG" + name), self.forward)
        signal.signal(signal.SIGALRM, self.kill)
        try:
            proc = subprocess.Popen(
                self.argv,
                preexec_fn=_own_group_in_front if self.tty else _own_group,  # noqa: PLW1509
            )
        except OSError as exc:
            sys.stderr.write(f"FATAL:   {start_failure(exc, self.argv[0], None)}\n")
            return START_FAILED_STATUS
        self.group = proc.pid
        # `signal` mode finds the launcher once its child exists, which is before Popen returns
        # (the child has already run its command): a signal then waited in `early`.
        while self.early:
            self.forward(self.early.pop(0))
        return exit_status(proc.wait())

    def forward(self, signum: int, _frame: object = None) -> None:
        if not self.group:
            self.early.append(signum)
            return
        name = signal.Signals(signum).name[3:]  # "SIGINT" -> "INT"
        group = self.group
        if name in KEYS and self.tty:
            with contextlib.suppress(OSError):
                group = os.tcgetpgrp(0) if os.tcgetpgrp(0) > 0 else group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
        if name in ("TERM", "HUP") and not self.kill_armed:
            self.kill_armed = True
            signal.alarm(KILL_AFTER_S)

    def kill(self, _signum: int = 0, _frame: object = None) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.group, signal.SIGKILL)


def _launchers(name: str) -> int | None:
    """The pid of NAME's launcher of this user, once it has started its command."""
    uid = os.getuid()
    found: int | None = None
    parents: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # After the command's name (in parentheses, may hold anything): state, ppid.
                fields = stat.read().rsplit(b")", 1)[1].split()
            parents.add(int(fields[1]))
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"-c" in words:
            at = words.index(b"-c") + 2
            if words[at : at + 2] == [b"run", name.encode()]:
                found = int(entry)
    return found if found is not None and found in parents else None


def send(name: str, signame: str) -> int:
    if signame not in FORWARDED:
        sys.stderr.write(f"launcher: cannot pass on SIG{signame}\n")
        return 2
    deadline = time.monotonic() + FIND_TIMEOUT_S
    while True:
        pid = _launchers(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, getattr(signal, "SIG" + signame))
                return 0
        if time.monotonic() >= deadline:
            return 1
        time.sleep(FIND_POLL_S)


def main(args: list[str]) -> int:
    if len(args) >= 4 and args[0] == "run" and "--" in args:
        split = args.index("--")
        options, argv = args[2:split], args[split + 1 :]
        if argv and options in ([], ["--tty"]):
            return Launcher(argv, tty=bool(options)).run()
    if len(args) == 3 and args[0] == "signal":
        return send(args[1], args[2])
    sys.stderr.write("usage: launcher run NAME [--tty] -- CMD... | launcher signal NAME SIG\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
