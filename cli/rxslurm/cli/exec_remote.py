"""`rxctl exec` across hosts: the exec protocol over rxd's network door (daemon: exec/door.py).

A minimal WebSocket client (RFC 6455, client side only, standard library) carries the request,
the caller's stdio and the protocol's messages over one MUNGE-authenticated TCP connection. When
rxd answers `direct` (the caller is the container's runtime user), rxctl closes the connection
and starts the step itself with srun, as rxd would have; Ctrl-C then reaches the command the
same way (rxslurm/slurm/step_signal.py), never through srun.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import termios
import threading
from collections.abc import Callable
from typing import Any

from rxslurm.cli.door import Door, DoorError, munge_header
from rxslurm.cli.exec_client import (
    ExecError,
    UseAgent,
    handling_signals,
    terminal_restored,
    window_size,
    write_all,
)
from rxslurm.protocol import routes
from rxslurm.protocol.exec_wire import (
    CONTROL,
    SIGNAL_NAMES,
    STDERR,
    STDIN,
    STDOUT,
    ProtocolError,
    decode,
    encode,
)

MAX_FRAME = 2 * 1024 * 1024
CHUNK = 64 * 1024

# -- WebSocket framing -----------------------------------------------------------------------


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class FrameReader:
    """Server frames (unmasked) from a byte stream: (opcode, payload) of whole messages."""

    def __init__(self) -> None:
        self.buffer = b""
        self.parts: list[bytes] = []
        self.opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        out: list[tuple[int, bytes]] = []
        while True:
            if len(self.buffer) < 2:
                return out
            first, second = self.buffer[0], self.buffer[1]
            length, at = second & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return out
                length, at = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return out
                length, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if second & 0x80:
                raise ExecError("rxd sent a masked frame")
            if length > MAX_FRAME:
                raise ExecError("rxd sent a frame that is too long")
            if len(self.buffer) < at + length:
                return out
            payload, self.buffer = self.buffer[at : at + length], self.buffer[at + length :]
            opcode = first & 0x0F
            if opcode >= 0x8:  # control frames are never fragmented
                out.append((opcode, payload))
                continue
            if opcode:
                self.opcode = opcode
            self.parts.append(payload)
            if first & 0x80:
                out.append((self.opcode, b"".join(self.parts)))
                self.parts = []


def handshake(
    door: Door, request_body: bytes, timeout: float = 30.0
) -> tuple[socket.socket, bytes]:
    """Open the stream: the WebSocket upgrade, proved by a MUNGE credential bound to the request's
    digest. The socket and any bytes that came after the answer's headers."""
    target = f"{routes.EXEC}?digest={hashlib.sha256(request_body).hexdigest()}"
    try:
        header, credential = munge_header(door, "GET", target, b"")
    except DoorError as exc:
        raise ExecError(str(exc)) from None
    host, port = door.host_port
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ExecError(f"cannot reach rxd on {door.address}: {exc}") from None
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {door.address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"{header}: {credential}",
    ]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(CHUNK)
            if not more:
                raise ExecError(f"rxd on {door.address} closed the connection")
            answer += more
            if len(answer) > 1024 * 1024:
                raise ExecError("rxd sent an answer that is too long")
        head, _, rest = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            raise ExecError(_refusal(sock, status, header_lines, rest))
    except OSError as exc:
        sock.close()
        raise ExecError(f"lost the connection to rxd: {exc}") from None
    except ExecError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock, rest


def _refusal(sock: socket.socket, status: int, header_lines: list[str], rest: bytes) -> str:
    """The one-line reason of a refused upgrade (rxd's JSON error body)."""
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = min(int(value.strip()), 1024 * 1024)
    while len(rest) < length:
        more = sock.recv(CHUNK)
        if not more:
            break
        rest += more
    try:
        error = json.loads(rest[:length] or b"null")
        message = error["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = rest[:200].decode(errors="replace").strip() or f"HTTP {status}"
    return str(message)


# -- the session -----------------------------------------------------------------------------


class RemoteSession:
    def __init__(
        self,
        door: Door,
        request: dict[str, Any],
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_stopped: Callable[[str], None] | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self.door = door
        self.request = request
        self.tty = bool(request.get("tty"))
        self.on_progress, self.on_tick, self.on_ready = on_progress, on_tick, on_ready
        self.on_stopped = on_stopped
        self.tick_s = tick_s
        self.signals: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def run(self) -> int:
        first = dict(self.request)
        if self.tty:
            size = window_size(0)
            if size:
                first["winsize"] = size
        # The digest covers exactly the bytes sent as the first message.
        body = json.dumps(first, separators=(",", ":")).encode()
        sock, rest = handshake(self.door, body)
        try:
            with self.catching_signals(), terminal_restored(0):
                sock.sendall(frame(CONTROL + body))
                if self.tty:
                    # rxd's pty stands in for this terminal; keys pass through unchanged.
                    import tty

                    with contextlib.suppress(termios.error):
                        tty.setraw(0)
                return self.relay(sock, rest)
        finally:
            sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def catching_signals(self) -> contextlib.AbstractContextManager[None]:
        """Signals become messages, sent by the main loop: a handler that sent itself could
        interleave its frame with one the loop is sending."""

        def caught(signum: int, frame_: object) -> None:
            self.signals.append(signum)
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"!")

        return handling_signals(caught)

    def relay(self, sock: socket.socket, rest: bytes) -> int:
        reader = FrameReader()
        selector = self.selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, "sock")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.stdin_open = False
        pending = reader.feed(rest)
        while True:
            for opcode, payload in pending:
                result = self.on_frame(sock, opcode, payload)
                if result is not None:
                    return result
            pending = []
            events = selector.select(self.tick_s if self.on_tick and not self.started else None)
            if not events and self.on_tick:
                self.on_tick()
            for key, _ in events:
                if key.data == "sock":
                    try:
                        data = sock.recv(CHUNK * 4)
                    except OSError as exc:
                        raise ExecError(f"lost the connection to rxd: {exc}") from None
                    if not data:
                        raise ExecError("rxd ended the session without an exit status; see its log")
                    pending += reader.feed(data)
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                    while self.signals:
                        self.send_signal(sock, self.signals.pop(0))
                elif key.data == "stdin" and self.stdin_open:
                    try:
                        data = os.read(0, CHUNK)
                    except OSError:
                        data = b""
                    sock.sendall(frame(STDIN + data))
                    if not data:
                        selector.unregister(0)
                        self.stdin_open = False

    started = False
    stdin_open = False
    selector: selectors.BaseSelector

    def start_stdin(self, sock: socket.socket) -> None:
        """rxd runs the step: from now on the caller's stdin goes to it."""
        try:
            self.selector.register(0, selectors.EVENT_READ, "stdin")
            self.stdin_open = True
        except (ValueError, OSError):
            # stdin is a regular file or closed: read it whole, at once.
            self.send_stdin_file(sock)

    def send_stdin_file(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, CHUNK):
                sock.sendall(frame(STDIN + data))
        sock.sendall(frame(STDIN))

    def send_signal(self, sock: socket.socket, signum: int) -> None:
        message: dict[str, Any] = {"signal": SIGNAL_NAMES[signal.Signals(signum)]}
        if signum == signal.SIGWINCH:
            if not self.tty:
                return
            size = window_size(0)
            if size:
                message["winsize"] = size
        with contextlib.suppress(OSError):
            sock.sendall(frame(CONTROL + encode(message)))

    def on_frame(self, sock: socket.socket, opcode: int, payload: bytes) -> int | None:
        if opcode == 0x8:
            raise ExecError("rxd ended the session without an exit status; see its log")
        if opcode == 0x9:
            sock.sendall(frame(payload, opcode=0xA))
            return None
        if opcode != 0x2 or not payload:
            return None
        channel, data = payload[:1], payload[1:]
        if channel == STDOUT:
            self.started = True
            write_all(1, data)
        elif channel == STDERR:
            self.started = True
            write_all(2, data)
        elif channel == CONTROL:
            try:
                message = decode(data)
            except ProtocolError as exc:
                raise ExecError(f"rxd sent a bad reply: {exc}") from None
            return self.on_message(sock, message)
        return None

    def on_message(self, sock: socket.socket, message: dict[str, Any]) -> int | None:
        if "exit" in message:
            if "stopped" in message and self.on_stopped:
                self.on_stopped(str(message["stopped"]))
            return int(message["exit"])
        if "error" in message:
            raise ExecError.of(message)
        if "agent" in message:
            sock.close()
            raise UseAgent(message["agent"])
        if "direct" in message:
            sock.close()
            if self.on_ready:
                self.on_ready()
            return run_direct(message["direct"], self.tty)
        if message.get("relayed"):
            self.start_stdin(sock)
            return None
        if "progress" in message and self.on_progress:
            self.on_progress(message)
        if message.get("ready"):
            if self.on_ready:
                self.on_ready()
            sock.sendall(frame(CONTROL + encode({"go": True})))
            self.started = True
        return None


# -- the step started here -------------------------------------------------------------------


def run_direct(step: dict[str, Any], tty: bool) -> int:
    """Start the step rxd described, as this user, and wait for it; its exit status."""
    from rxslurm.slurm.step_signal import StepSignaller, strip_srun_task_lines

    try:
        argv = [str(a) for a in step["argv"]]
        env = {str(k): str(v) for k, v in dict(step["env"]).items()}
        job_id, step_name = int(step["job_id"]), str(step["step_name"])
        # The step that passes a Ctrl-C to the command under its launcher (an older rxd's step
        # has none: scancel signals the step).
        inside = [str(a) for a in step["signal"]] if step.get("signal") else None
    except (KeyError, TypeError, ValueError):
        raise ExecError("rxd sent a step that rxctl cannot start") from None
    srun = _which("srun")
    argv[0] = srun  # this host's srun
    if inside:
        inside[0] = srun
    env["PATH"] = os.environ.get("PATH") or env.get("PATH", "/usr/bin:/bin")
    for name in ("SLURM_CONF", "MUNGE_SOCKET"):
        if name in os.environ:
            env[name] = os.environ[name]
    if tty:
        # srun --pty owns the terminal (raw mode: Ctrl-C is a key it passes on); it must stay in
        # the terminal's foreground group, so rxctl only waits.
        with handling_signals(signal.SIG_IGN, (signal.SIGINT, signal.SIGQUIT)):
            return _status(subprocess.call(argv, env=env))  # noqa: S603 - argv list
    # Without a terminal, srun runs in its own process group: a terminal's Ctrl-C reaches only
    # rxctl, which gives it to the step once (srun would kill the step).
    stdin: int | None = None
    pump = None
    if os.isatty(0):
        # A background group may not read the terminal: rxctl reads it and passes it on.
        stdin_r, stdin_w = os.pipe()
        stdin, pump = stdin_r, threading.Thread(target=_pump_stdin, args=(stdin_w,), daemon=True)
    proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
        argv, env=env, stdin=stdin, stderr=subprocess.PIPE, process_group=0
    )
    if stdin is not None:
        os.close(stdin)
        assert pump is not None
        pump.start()

    def to_srun(name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.Signals[f"SIG{name}"])

    signaller = StepSignaller(
        job_id,
        step_name,
        alive=lambda: proc.poll() is None,
        inside=inside,
        env=env,
        fallback=to_srun,
    )
    # Under the launcher QUIT, TERM and HUP reach the command as INT does (its trap runs).
    through_launcher = (signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP) if inside else ()

    def forward(signum: int, frame_: object) -> None:
        if signum == signal.SIGINT or signum in through_launcher:
            signaller.send(signal.Signals(signum).name.removeprefix("SIG"))
        elif signum != signal.SIGWINCH:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    with handling_signals(forward):
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.readline(), b""):  # type: ignore[union-attr]
            write_all(2, strip_srun_task_lines(chunk))
        return _status(proc.wait())


def _pump_stdin(fd: int) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(0, CHUNK):
            write_all(fd, data)
    os.close(fd)


def _which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if found is None:
        raise ExecError(f"{name} not found on PATH: exec as the container's user needs Slurm here")
    return found


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(door: Door, request: dict[str, Any], **hooks: Any) -> int:
    """Run one session over the network door; the command's exit status, or ExecError."""
    if request.get("tty") and not os.isatty(0):
        raise ExecError("a terminal session needs a terminal on stdin")
    return RemoteSession(door, request, **hooks).run()
