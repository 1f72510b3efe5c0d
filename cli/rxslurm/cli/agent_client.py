"""`rxctl exec` through the container's exec agent (docs/exec.md, "The agent").

rxd answers a session that offered `"agent": true` with where the agent listens and a ticket;
rxctl then connects to the agent itself, proves who it is with a MUNGE credential bound to the
agent's nonce and the request, and relays its own stdio, signals and window size. Anything that
goes wrong before the command starts is AgentUnavailable: the caller falls back to a Slurm step.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
from typing import Any

from rxslurm.cli.exec_client import (
    ExecError,
    handling_signals,
    terminal_restored,
    window_size,
    write_all,
)
from rxslurm.protocol.agent_wire import (
    BIND_METHOD,
    MAX_DATA,
    VERSION,
    FrameReader,
    WireError,
    bind_target,
    control,
    frame,
    is_nonce,
    proof,
)
from rxslurm.protocol.exec_wire import CONTROL, SIGNAL_NAMES, STDERR, STDIN, STDOUT, decode

CONNECT_TIMEOUT_S = 5.0
# What the agent takes of rxd's request (the rest is rxd's business: the project, waking).
_FIELDS = ("argv", "shell", "tty", "cwd", "term")


class AgentUnavailable(Exception):
    """The agent cannot run the command (not there, refused, gone before it started)."""


class Stream:
    """The agent's frames, one at a time: a read may bring several (`started` and the output
    and exit of a quick command arrive together), and none may be lost."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.pending: list[tuple[bytes, bytes]] = []

    def next_control(self) -> dict[str, Any]:
        """The next control message; frames before it stay pending, in order."""
        while True:
            for i, (channel, payload) in enumerate(self.pending):
                if channel == CONTROL:
                    del self.pending[i]
                    return decode(payload)
            self.read()

    def read(self) -> None:
        data = self.sock.recv(MAX_DATA + 16)
        if not data:
            raise AgentUnavailable("the connection closed")
        self.pending += self.reader.feed(data)

    def take(self) -> list[tuple[bytes, bytes]]:
        frames, self.pending = self.pending, []
        return frames


def prepare() -> None:
    """Load the MUNGE binding (ctypes, libmunge) and the request binding (hashlib) now; a
    session that is handed to the agent needs them, and loading them is most of its own
    start-up. Nothing is reported: a library that cannot load fails where it is used."""
    import rxslurm.slurm.request_binding  # noqa: F401 - loaded for later
    from rxslurm.slurm.munge import available

    available()


def connect(grant: dict[str, Any], munge_socket: str | None = None) -> tuple[Stream, str, int]:
    """A connection to the agent rxd named, which has proved it is the container's runtime user
    (its MUNGE credential over our nonce and its own); the agent's nonce and job."""
    from rxslurm.slurm.munge import MungeError, decode

    try:
        host, port, uid = str(grant["host"]), int(grant["port"]), int(grant["uid"])
        job_id = int(grant["job_id"])
    except (KeyError, TypeError, ValueError):
        raise AgentUnavailable("rxd named no agent") from None
    try:
        sock = _open(host, port)
    except OSError as exc:
        raise AgentUnavailable(f"cannot reach the agent on {host}:{port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = Stream(sock)
    ours = os.urandom(16).hex()
    try:
        sock.sendall(control({"hello": VERSION, "nonce": ours}))
        hello = stream.next_control()
        theirs = hello.get("nonce")
        if not is_nonce(theirs) or hello.get("job") != job_id:
            raise AgentUnavailable("it is not the agent of this container's job")
        decoded = decode(str(hello.get("credential")), socket=munge_socket)
        if decoded.uid != uid or decoded.payload != proof(job_id, ours, str(theirs)):
            raise AgentUnavailable("it could not prove it is the container's agent")
    except (AgentUnavailable, MungeError, OSError, ValueError, WireError) as exc:
        sock.close()
        reason = getattr(exc, "message", None) or str(exc)
        raise AgentUnavailable(f"the agent on {host}:{port}: {reason}") from None
    return stream, str(theirs), job_id


def _open(host: str, port: int) -> socket.socket:
    """A TCP connection to host:port. The agent gives its node's address: connected to as it
    is, since create_connection's getaddrinfo loads the idna codec (stringprep, unicodedata),
    which costs more than the connection. A name goes through create_connection."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)


class AgentSession:
    def __init__(
        self, grant: dict[str, Any], request: dict[str, Any], munge_socket: str | None = None
    ) -> None:
        self.grant = grant
        self.munge_socket = munge_socket
        self.tty = bool(request.get("tty"))
        self.request = {k: request[k] for k in _FIELDS if k in request}
        self.signals: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.selector = selectors.DefaultSelector()
        self.stdin_open = False

    def start(self) -> Stream:
        """Connect, authenticate, and wait until the command runs."""
        from rxslurm.slurm.munge import MungeError, encode
        from rxslurm.slurm.request_binding import BindingError, bind

        stream, nonce, job_id = connect(self.grant, self.munge_socket)
        sock = stream.sock
        try:
            if self.tty:
                size = window_size(0)
                if size:
                    self.request["winsize"] = size
            body = json.dumps(
                {"ticket": self.grant.get("ticket"), "request": self.request},
                separators=(",", ":"),
            ).encode()
            binding = bind(BIND_METHOD, bind_target(job_id), body, os.getuid(), nonce=nonce)
            try:
                credential = encode(binding.to_payload(), socket=self.munge_socket)
            except MungeError as exc:
                raise AgentUnavailable(f"MUNGE: {exc.message}") from None
            sock.sendall(control({"credential": credential}) + frame(CONTROL, body))
            answer = stream.next_control()
        except (OSError, ValueError, WireError, BindingError) as exc:
            sock.close()
            raise AgentUnavailable(str(exc)) from None
        except AgentUnavailable:
            sock.close()
            raise
        if answer.get("started"):
            return stream
        sock.close()
        error = str(answer.get("error", "no answer"))
        if error.startswith("refused"):
            raise AgentUnavailable(error)
        raise ExecError(error)  # the request itself is wrong: a step would fail the same way

    def run(self) -> int:
        stream = self.start()
        sock = stream.sock
        try:
            with self.catching_signals(), terminal_restored(0):
                if self.tty:
                    import termios
                    import tty

                    with contextlib.suppress(termios.error):
                        tty.setraw(0)
                return self.relay(stream)
        finally:
            sock.close()
            self.selector.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def catching_signals(self) -> contextlib.AbstractContextManager[None]:
        def caught(signum: int, frame_: object) -> None:
            self.signals.append(signum)
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"!")

        return handling_signals(caught)

    def relay(self, stream: Stream) -> int:
        sock = stream.sock
        sock.settimeout(None)
        self.selector.register(sock, selectors.EVENT_READ, "sock")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.start_stdin(sock)
        pending = stream.take()
        while True:
            for channel, payload in pending:
                result = self.on_frame(channel, payload)
                if result is not None:
                    return result
            pending = []
            for key, _ in self.selector.select():
                if key.data == "sock":
                    try:
                        stream.read()
                    except AgentUnavailable:
                        raise ExecError(
                            "the agent ended the session without an exit status"
                        ) from None
                    except OSError as exc:
                        raise ExecError(f"lost the connection to the agent: {exc}") from None
                    except WireError as exc:
                        raise ExecError(f"the agent broke its protocol: {exc}") from None
                    pending = stream.take()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                    while self.signals:
                        self.send_signal(sock, self.signals.pop(0))
                elif key.data == "stdin":
                    try:
                        data = os.read(0, MAX_DATA)
                    except OSError:
                        data = b""
                    sock.sendall(frame(STDIN, data))
                    if not data:
                        self.selector.unregister(0)

    def start_stdin(self, sock: socket.socket) -> None:
        try:
            self.selector.register(0, selectors.EVENT_READ, "stdin")
        except (ValueError, OSError):
            # stdin is a regular file or closed: send it whole, at once.
            with contextlib.suppress(OSError):
                while data := os.read(0, MAX_DATA):
                    sock.sendall(frame(STDIN, data))
            sock.sendall(frame(STDIN, b""))

    def send_signal(self, sock: socket.socket, signum: int) -> None:
        message: dict[str, Any] = {"signal": SIGNAL_NAMES[signal.Signals(signum)]}
        if signum == signal.SIGWINCH:
            if not self.tty:
                return
            size = window_size(0)
            if size:
                message["winsize"] = size
        with contextlib.suppress(OSError):
            sock.sendall(control(message))

    def on_frame(self, channel: bytes, payload: bytes) -> int | None:
        if channel == STDOUT:
            write_all(1, payload)
        elif channel == STDERR:
            write_all(2, payload)
        elif channel == CONTROL:
            try:
                message = decode(payload)
            except ValueError as exc:
                raise ExecError(f"the agent sent a bad reply: {exc}") from None
            if "exit" in message:
                return int(message["exit"])
            if "error" in message:
                raise ExecError(str(message["error"]))
        return None


def run(grant: dict[str, Any], request: dict[str, Any], munge_socket: str | None = None) -> int:
    """Run the request through the agent rxd named; its exit status. AgentUnavailable before
    the command started, ExecError after."""
    return AgentSession(grant, request, munge_socket).run()
