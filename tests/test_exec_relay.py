"""rxd relays an exec's streams itself (findings 11 and 16), on the real cluster.

srun runs as the project's runtime user, who need not be the caller: it must hold none of the
caller's descriptors (its terminal above all). And a caller whose stderr is never read must not
keep rxd from ending the step when the caller goes away.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import select
import signal
import subprocess
import termios
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.cli import ok
from tests.support.cluster import processes_with, user_env, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, wait_state

pytestmark = pytest.mark.cluster

# Jobs are Slurm singletons named rx-<project>: a name of this run's own.
PROJECT = f"rl-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd() as daemon:
        try:
            make_project(daemon, PROJECT)
            ok(daemon.rxctl("rxalice", "enable", "--project", PROJECT))
            # rxbob manages it: his sessions run as rxalice, the project's runtime user.
            add = ("project", "member", "add", "--project", PROJECT, "rxbob", "--role", "manager")
            ok(daemon.rxctl("rxalice", *add))
            wait_state(daemon, PROJECT, "running", timeout=180)
            yield daemon
        finally:
            daemon.rxctl("rxalice", "disable", "--project", PROJECT)


def exec_as(user: str, rxd: Rxd, *argv: str, **streams) -> subprocess.Popen[bytes]:
    pw = pwd.getpwnam(user)
    return subprocess.Popen(
        [RXCTL, "--socket", str(rxd.socket), "exec", "--project", PROJECT, "--", *argv],
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(user, pw.pw_gid),
        # The relay is the step path's: the exec agent (where it answers) runs no srun at all.
        env={**user_env(user), "RXSLURM_EXEC_PATH": "step"},
        cwd="/",
        **streams,
    )


def descriptors(pid: int) -> set[str]:
    """What each open descriptor of pid is (pipe:[N], /dev/pts/N, socket:[N], ...)."""
    links = set()
    with contextlib.suppress(OSError):  # the process may end meanwhile
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.add(os.readlink(fd))
    return links


def step_processes(marker: str) -> dict[int, set[str]]:
    """srun and the step's processes (on this one-machine cluster all are local), with their
    descriptors; found by the instance name in their argv, or the command's marker."""
    pids = set(processes_with(f"instance://rx-{PROJECT}-")) | set(processes_with(marker))
    return {pid: descriptors(pid) for pid in pids}


def pipe_name(fd: int) -> str:
    return f"pipe:[{os.fstat(fd).st_ino}]"


def test_srun_holds_none_of_the_callers_pipes(rxd: Rxd) -> None:
    proc = exec_as(
        "rxbob",
        rxd,
        "sh",
        "-c",
        "sleep 5151",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    caller = {pipe_name(f.fileno()) for f in (proc.stdin, proc.stdout, proc.stderr)}
    try:
        wait_for(lambda: processes_with("sleep\x005151"), timeout=60, what="the command")
        steps = step_processes("sleep\x005151")
        srun = [pid for pid in steps if Path(f"/proc/{pid}/comm").read_text().strip() == "srun"]
        assert srun, steps
        assert {pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name for pid in srun} == {"rxalice"}
        # The inspection sees what it looks for: rxd itself holds the caller's pipes.
        assert rxd.proc is not None and caller <= descriptors(rxd.proc.pid)
        held = {pid: links & caller for pid, links in steps.items() if links & caller}
        assert held == {}, f"processes of the runtime user hold the caller's pipes: {held}"
    finally:
        proc.kill()
        proc.communicate()
    wait_for(lambda: not processes_with("sleep\x005151"), timeout=60, what="the step to end")


def test_srun_holds_none_of_the_callers_terminal(rxd: Rxd) -> None:
    env = {**user_env("rxbob"), "TERM": "xterm", "RXSLURM_EXEC_PATH": "step"}
    argv = ["-u", "rxbob", "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    argv += [RXCTL, "--socket", str(rxd.socket), "exec", "-t", "--project", PROJECT]
    argv += ["--", "sh", "-c", "sleep 5252; exit 4"]
    child = pexpect.spawn("runuser", argv, timeout=60, dimensions=(30, 100))
    try:
        terminal = os.readlink(f"/proc/{child.pid}/fd/0")
        assert terminal.startswith("/dev/pts/")
        wait_for(lambda: processes_with("sleep\x005252"), timeout=60, what="the command")
        steps = step_processes("sleep\x005252")
        assert steps
        held = {pid: links for pid, links in steps.items() if terminal in links}
        assert held == {}, f"processes of the runtime user hold the caller's terminal {terminal}"
        # The command still has a terminal of its own (rxd's pty, relayed), and its size.
        child.sendintr()  # ^C through the relay ends the sleep; sh then exits with 130
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus != 0


def test_a_stderr_that_never_drains_does_not_stop_the_disconnect(rxd: Rxd) -> None:
    proc = exec_as(
        "rxalice",
        rxd,
        "sh",
        "-c",
        "yes 6161-err >&2",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read
    )
    assert proc.stderr is not None
    marker = "yes\x006161-err"
    try:
        wait_for(lambda: processes_with(marker), timeout=60, what="the command")
        wait_for(lambda: pipe_full(proc.stderr.fileno()), timeout=60, what="stderr to fill up")
    finally:
        proc.send_signal(signal.SIGKILL)  # the caller goes away; its stderr still unread
        proc.wait()
    wait_for(lambda: not processes_with(marker), timeout=90, what="the step to end")
    wait_for(
        lambda: not processes_with(f"instance://rx-{PROJECT}-"), timeout=60, what="srun to end"
    )
    # What filled the pipe was the command's stderr, relayed in order (Apptainer may add lines).
    arrived = os.read(proc.stderr.fileno(), unread(proc.stderr.fileno()))
    proc.stderr.close()
    assert b"6161-err\n" * 100 in arrived, arrived[:200]


def pipe_full(fd: int) -> bool:
    """The pipe takes no more: all its pages are in use (poll on a writing view of it says so).

    Not a byte count: a write whose tail does not fit in the last page's room starts a new page,
    so a pipe of 64 KiB is full at 48,000 bytes written 3,000 at a time. rxd writes chunks of
    whatever size it read from srun, so how many bytes a never-read pipe holds varies from run to
    run (59,355 seen on the real runtime, with srun's and the command's pipes full behind it).
    """
    view = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(view, select.POLLOUT)
        return not poller.poll(0)
    finally:
        os.close(view)


def unread(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
