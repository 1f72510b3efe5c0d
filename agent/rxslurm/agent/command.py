"""One command of the agent's: spawned in the container with pipes or a pty, its streams,
signals and window size carried over the connection, its exit status sent last.

The command is the agent's child, in its own session, inside the container: a forwarded Ctrl-C
reaches its process group directly, as a terminal's would (no Slurm step, no `apptainer exec` in
between to die on it)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from typing import Any

from rxslurm.agent.launcher import (
    KILL_AFTER_S,
    START_FAILED_STATUS,
    default_signals,
    exit_status,
    start_failure,
)
from rxslurm.protocol.agent_wire import MAX_DATA, FrameReader, WireError, control, frame
from rxslurm.protocol.exec_wire import CONTROL, SIGNALS, STDERR, STDIN, STDOUT

# Apptainer's own shell action: the same shell and prompt `apptainer shell` gives.
SHELL_ACTION = "/.singularity.d/actions/shell"
FALLBACK_SHELL = "/bin/sh"
DEFAULT_CWD = "/workspace"
# After the command exits, output its background children still write is passed on this long.
DRAIN_S = 0.5
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
# The agent's own variables, never a command's.
_PRIVATE_ENV = ("RXSLURM_AGENT",)


# The process groups of the running commands, ended with the agent.
_running: set[int] = set()
_running_lock = threading.Lock()


def end_all() -> None:
    with _running_lock:
        groups = list(_running)
    for group in groups:
        for signum in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)


class BadRequest(ValueError):
    """A request the agent will not run; one line for people."""


class StartFailed(Exception):
    """The command could not start: told as `apptainer exec` tells it (a FATAL line on stderr,
    status 255), so a caller sees the same on either path."""


@dataclass(frozen=True)
class Request:
    argv: tuple[str, ...]
    shell: bool = False
    tty: bool = False
    cwd: str | None = DEFAULT_CWD
    term: str | None = None
    winsize: tuple[int, int] | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Request:
        known = {"argv", "shell", "tty", "cwd", "term", "winsize"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadRequest(f"unknown request field {unknown[0]!r}")
        argv = data.get("argv", [])
        if not isinstance(argv, list) or not all(
            isinstance(a, str) and "\0" not in a for a in argv
        ):
            raise BadRequest("argv must be a list of strings without NUL bytes")
        shell, tty = data.get("shell", False), data.get("tty", False)
        if not isinstance(shell, bool) or not isinstance(tty, bool):
            raise BadRequest("shell and tty must be true or false")
        if shell == bool(argv):
            raise BadRequest("a command needs argv and a shell takes none")
        cwd = data.get("cwd", DEFAULT_CWD)
        if cwd is not None and (
            not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd or len(cwd) > 4096
        ):
            raise BadRequest("cwd must be an absolute path")
        term = data.get("term")
        if term is not None and (not isinstance(term, str) or not _TERM.fullmatch(term)):
            raise BadRequest("term must be a terminal type name")
        return cls(tuple(argv), shell=shell, tty=tty, cwd=cwd, term=term, winsize=_winsize(data))


def _winsize(data: dict[str, Any]) -> tuple[int, int] | None:
    size = data.get("winsize")
    if size is None:
        return None
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in size)
    ):
        raise BadRequest("winsize must be [rows, cols]")
    return size[0], size[1]


def command_env(request: Request) -> dict[str, str]:
    """The agent's environment (the container's, as `apptainer exec` made it from the job's),
    with a terminal type for a terminal session."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env.pop("TERM", None)
    if request.tty and request.term:
        env["TERM"] = request.term
    env["APPTAINER_COMMAND"] = "shell" if request.shell else "exec"
    return env


def command_argv(request: Request) -> list[str]:
    if request.shell:
        return [SHELL_ACTION] if os.access(SHELL_ACTION, os.X_OK) else [FALLBACK_SHELL]
    return list(request.argv)


def _set_winsize(fd: int, size: tuple[int, int] | None) -> None:
    if size:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def _inherits_ignored_signals() -> bool:
    """Whether a child would start with SIGINT or SIGQUIT ignored: exec keeps an ignored
    signal ignored and resets a caught one to its default. Only then does the child need
    default_signals, which makes Popen fork the whole agent instead of vfork (milliseconds
    per command rather than a tenth of one)."""
    return any(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGQUIT))


def _take_terminal() -> None:  # pragma: no cover - runs in the child
    default_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Command:
    """Runs one request over `sock` (authenticated already) until the command ends."""

    def __init__(self, sock: socket.socket, request: Request, reader: FrameReader) -> None:
        self.sock = sock
        self.request = request
        self.reader = reader
        self.selector = selectors.DefaultSelector()
        self.stdin_fd: int | None = None
        self.stdin_pending = b""
        self.stdin_eof = False
        self.outputs: dict[int, bytes] = {}
        self.master: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill_at: float | None = None
        self.client_gone = False

    def send(self, channel: bytes, payload: bytes) -> None:
        if self.client_gone:
            return  # output nobody reads is dropped, as a step's is once its srun is gone
        try:
            self.sock.sendall(frame(channel, payload))
        except OSError:
            self.gone()

    def start(self) -> None:
        request = self.request
        argv, env = command_argv(request), command_env(request)
        cwd = request.cwd
        if cwd is not None and not os.path.isdir(cwd):
            raise StartFailed(
                f"failed to set working directory: chdir {cwd}: no such file or directory"
            )
        try:
            if request.tty:
                master, slave = os.openpty()
                _set_winsize(slave, request.winsize)
                try:
                    self.proc = subprocess.Popen(
                        argv,
                        stdin=slave,
                        stdout=slave,
                        stderr=slave,
                        cwd=cwd,
                        env=env,
                        start_new_session=True,
                        preexec_fn=_take_terminal,  # noqa: PLW1509 - one ioctl, before exec
                    )
                finally:
                    os.close(slave)
                self.master = master
                os.set_blocking(master, False)
                self.outputs[master] = STDOUT
                self.stdin_fd = master
            else:
                reset = default_signals if _inherits_ignored_signals() else None
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=reset,  # noqa: PLW1509 - two signal calls, before exec
                )
                assert self.proc.stdin and self.proc.stdout and self.proc.stderr
                self.stdin_fd = self.proc.stdin.fileno()
                self.outputs[self.proc.stdout.fileno()] = STDOUT
                self.outputs[self.proc.stderr.fileno()] = STDERR
                for fd in (self.stdin_fd, *self.outputs):
                    os.set_blocking(fd, False)
        except (FileNotFoundError, PermissionError) as exc:
            raise StartFailed(start_failure(exc, argv[0], cwd)) from None

    def run(self) -> int:
        """The command's exit status, after its output has gone to the client."""
        assert self.proc is not None
        pidfd = os.pidfd_open(self.proc.pid)
        with _running_lock:
            _running.add(self.proc.pid)
        try:
            self.selector.register(self.sock, selectors.EVENT_READ, "sock")
            self.selector.register(pidfd, selectors.EVENT_READ, "exit")
            for fd in self.outputs:
                self.selector.register(fd, selectors.EVENT_READ, "fd")
            self.send(CONTROL, b'{"started":true}')
            returncode = self.pump()
            self.drain()
            return exit_status(returncode)
        finally:
            with _running_lock:
                _running.discard(self.proc.pid)
            self.selector.close()
            os.close(pidfd)
            self.close_child_ends()

    def pump(self) -> int:
        assert self.proc is not None
        while True:
            timeout = None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())
            events = self.selector.select(timeout)
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.signal_group(signal.SIGKILL)
                self.kill_at = None
            for key, mask in events:
                if key.data == "exit":
                    return self.proc.wait()
                if key.data == "sock":
                    self.read_client()
                    continue
                fd = int(key.fd)
                if mask & selectors.EVENT_READ and fd in self.outputs:
                    self.read_output(fd)
                if mask & selectors.EVENT_WRITE:
                    self.write_stdin()

    def read_output(self, fd: int) -> None:
        try:
            data = os.read(fd, MAX_DATA)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # a pty whose last holder closed it
                raise
            data = b""
        if not data:
            self.outputs.pop(fd, None)
            self.watch(fd)
            return
        self.send(self.outputs[fd], data)

    def drain(self) -> None:
        """What the command left in its pipes; background children holding them get a moment."""
        deadline = time.monotonic() + DRAIN_S
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        while self.outputs and (left := deadline - time.monotonic()) > 0:
            for key, mask in self.selector.select(left):
                fd = int(key.fd)
                if key.data == "fd" and mask & selectors.EVENT_READ and fd in self.outputs:
                    self.read_output(fd)

    def read_client(self) -> None:
        try:
            data = self.sock.recv(MAX_DATA + 16)
        except OSError:
            data = b""
        if not data:
            # The caller is gone: end the command as a cancelled step ends.
            self.gone()
            return
        try:
            frames = self.reader.feed(data)
        except WireError:
            self.gone()
            return
        for channel, payload in frames:
            if channel == STDIN:
                self.to_stdin(payload)
            elif channel == CONTROL:
                self.on_control(payload)

    def on_control(self, payload: bytes) -> None:
        import json

        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        name = message.get("signal")
        if name == "WINCH":
            with contextlib.suppress(BadRequest):
                size = _winsize(message)
                if self.master is not None:
                    _set_winsize(self.master, size)
        elif isinstance(name, str) and name in SIGNALS:
            self.forward(SIGNALS[name])

    def forward(self, signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGQUIT):
            # As a terminal's key: to the foreground group (the command's, or in a terminal
            # session the job the shell put in front).
            group = self.foreground_group()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
            return
        self.signal_group(signum)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_AFTER_S

    def foreground_group(self) -> int:
        assert self.proc is not None
        if self.master is not None:
            with contextlib.suppress(OSError):
                group = os.tcgetpgrp(self.master)
                if group > 0:
                    return group
        return self.proc.pid

    def signal_group(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def gone(self) -> None:
        self.client_gone = True
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.stdin_pending = b""
        self.hang_up()

    def hang_up(self) -> None:
        if self.master is not None:
            self.signal_group(signal.SIGHUP)
        self.signal_group(signal.SIGTERM)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_AFTER_S

    def to_stdin(self, data: bytes) -> None:
        if self.stdin_fd is None or self.stdin_eof:
            return
        if not data:
            self.stdin_eof = True
            if self.master is None and not self.stdin_pending:
                self.close_stdin()
            return
        was_empty = not self.stdin_pending
        self.stdin_pending += data
        if was_empty:
            self.write_stdin()

    def write_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        try:
            written = os.write(fd, self.stdin_pending)
            self.stdin_pending = self.stdin_pending[written:]
        except BlockingIOError:
            pass
        except OSError:
            # The command closed its stdin: what the caller types now goes nowhere.
            self.stdin_pending = b""
        self.watch_stdin()
        if not self.stdin_pending and self.stdin_eof and self.master is None:
            self.close_stdin()

    def watch_stdin(self) -> None:
        """Wait for the command to take more input only while some is pending; meanwhile the
        caller is not read further (as a full pipe holds its writer)."""
        if self.stdin_fd is not None:
            self.watch(self.stdin_fd)
        sock_watched = self.sock.fileno() in self.selector.get_map()
        if self.stdin_pending and sock_watched:
            self.selector.unregister(self.sock)
        elif not self.stdin_pending and not sock_watched and not self.client_gone:
            self.selector.register(self.sock, selectors.EVENT_READ, "sock")

    def watch(self, fd: int) -> None:
        """Watch fd for what is still wanted of it: its output, room for pending input."""
        events = selectors.EVENT_READ if fd in self.outputs else 0
        if fd == self.stdin_fd and self.stdin_pending:
            events |= selectors.EVENT_WRITE
        registered = fd in self.selector.get_map()
        if events and registered:
            self.selector.modify(fd, events, "fd")
        elif events:
            self.selector.register(fd, events, "fd")
        elif registered:
            self.selector.unregister(fd)

    def close_stdin(self) -> None:
        assert self.proc is not None
        if self.proc.stdin is not None and self.stdin_fd is not None:
            fd, self.stdin_fd = self.stdin_fd, None
            self.watch(fd)
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close_child_ends(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def serve_request(sock: socket.socket, data: dict[str, Any], reader: FrameReader) -> None:
    """Run the request; every way it ends is one `exit` or `error` message."""
    try:
        command = Command(sock, Request.parse(data), reader)
        command.start()
    except BadRequest as exc:
        sock.sendall(control({"error": str(exc)}))
        return
    except StartFailed as exc:
        sock.sendall(
            control({"started": True})
            + frame(STDERR, f"FATAL:   {exc}\n".encode())
            + control({"exit": START_FAILED_STATUS})
        )
        return
    code = command.run()
    with contextlib.suppress(OSError):
        sock.sendall(control({"exit": code}))
