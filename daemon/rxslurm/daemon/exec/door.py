"""Exec over the network door: the exec protocol (docs/exec.md) as a framed stream over TCP.

File descriptors cannot cross hosts, so the caller's stdio travels in the connection. The client
opens a WebSocket on `GET /v1/exec?digest=<sha256 of the request>`; the handshake is an ordinary
request of the network door, so its MUNGE credential proves the caller and binds the path, and
with it the digest. The first message is the exec request, which must match the digest. Every
message is binary; its first byte names its channel:

    c  a JSON object: the request, then the exec protocol's messages both ways
    0  the caller's stdin (client to rxd); an empty one is the end of stdin
    1  the command's stdout, 2 its stderr (rxd to client)

A terminal session's window size rides on the control channel as `"winsize": [rows, cols]`, in
the request and with every `{"signal": "WINCH"}`.

rxd then runs the same Session as for its Unix socket, with the stream standing in for the
caller's descriptors: pipes, or for a terminal a pty of rxd's whose master this module drives.
A caller who is the container's runtime user gets `{"direct": {...}}` instead (the step's argv,
environment and name) and starts the step themselves; rxd holds nothing for that session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from rxslurm.daemon.api.app import caller_of
from rxslurm.daemon.errors import BadRequest, Forbidden
from rxslurm.daemon.exec.server import REQUEST_TIMEOUT_S, ExecServer, Session
from rxslurm.protocol import routes as route
from rxslurm.protocol.exec_wire import (
    CONTROL,
    MAX_MESSAGE,
    MAX_REQUEST,
    STDERR,
    STDIN,
    STDOUT,
    ProtocolError,
    decode,
    encode,
)

log = logging.getLogger("rxslurm.exec")

EXEC_SERVER: web.AppKey[ExecServer] = web.AppKey("exec_server", ExecServer)
# Stream data not yet taken by the other side, per direction, before rxd stops reading its source.
BUFFER = 64 * 1024
# Messages that end a session; sent only after the command's last output.
_FINAL = ("exit", "error", "direct")


def is_final(line: bytes) -> bool:
    try:
        message = decode(line)
    except ProtocolError:
        return False
    return any(key in message for key in _FINAL)


def set_winsize(fd: int, winsize: Any) -> None:
    if (
        isinstance(winsize, list)
        and len(winsize) == 2
        and all(isinstance(n, int) and 0 < n < 65536 for n in winsize)
    ):
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", winsize[0], winsize[1], 0, 0))


class Channels:
    """rxd's ends of a session's channels (the pipes or pty that stand in for the caller's
    descriptors, and its control socket), read on the event loop into `outgoing` as channel-tagged
    messages, the final control message held until the last output. A transport delivers them."""

    def __init__(self, tty: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.ctl, session_ctl = socket.socketpair()
        self.session_conn = session_ctl
        self.owned: list[int] = []
        if tty:
            master, slave = os.openpty()
            self.stdin_w = self.stdout_r = master
            self.session_fds = [slave, os.dup(slave)]
            self.owned.append(master)
        else:
            in_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
            self.stdout_r, out_w = os.pipe2(os.O_CLOEXEC)
            self.session_fds = [in_r, out_w]
            self.owned += [self.stdin_w, self.stdout_r]
        self.stderr_r, err_w = os.pipe2(os.O_CLOEXEC)
        self.session_fds.append(err_w)
        self.owned.append(self.stderr_r)
        self.tty = tty
        for fd in (self.stdin_w, self.stdout_r, self.stderr_r):
            os.set_blocking(fd, False)
        self.ctl.setblocking(False)
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stdin_buffer = bytearray()
        self.stdin_eof = False
        self.ctl_buffer = b""
        self.held: list[bytes] = []
        self.ctl_open = True
        self.open_outputs = {self.stdout_r: STDOUT, self.stderr_r: STDERR}

    # -- from the session to the client -----------------------------------------------------

    def start_reading(self) -> None:
        for fd in self.open_outputs:
            self.loop.add_reader(fd, self.on_output, fd)
        self.loop.add_reader(self.ctl.fileno(), self.on_control)

    def on_output(self, fd: int) -> None:
        if fd not in self.open_outputs:
            return
        try:
            data = os.read(fd, BUFFER)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a pty's master reads EIO once the last slave is closed
        if data:
            self.outgoing.put_nowait(self.open_outputs[fd] + data)
            return
        self.loop.remove_reader(fd)
        del self.open_outputs[fd]
        self.release_held()

    def on_control(self) -> None:
        try:
            data = self.ctl.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self.ctl_open:
                self.loop.remove_reader(self.ctl.fileno())
                self.ctl_open = False
            return
        *lines, self.ctl_buffer = (self.ctl_buffer + data).split(b"\n")
        for line in lines:
            if is_final(line):
                self.held.append(CONTROL + line)  # after the command's last output
            elif line:
                self.outgoing.put_nowait(CONTROL + line)
        self.release_held()

    def release_held(self) -> None:
        if not self.open_outputs:
            for message in self.held:
                self.outgoing.put_nowait(message)
            self.held = []

    async def deliver(self, message: bytes) -> None:
        raise NotImplementedError

    async def send_loop(self) -> None:
        while (message := await self.outgoing.get()) is not None:
            try:
                await self.deliver(message)
            except (ConnectionError, RuntimeError):
                return  # the client is gone; the session learns it from the control socket

    def hang_up(self) -> None:
        """As a client that left: the session sees its control connection close, ends the
        step, and still answers."""
        with contextlib.suppress(OSError):
            self.ctl.shutdown(socket.SHUT_WR)

    async def wait_drained(self) -> None:
        """Once the session ended: until its last output and final message are queued."""
        self.session_conn.close()
        while self.open_outputs or self.held or self.ctl_open:
            await asyncio.sleep(0.01)  # the readers run meanwhile
        await self.outgoing.put(None)

    # -- from the client to the session -----------------------------------------------------

    async def to_stdin(self, data: bytes) -> None:
        if self.stdin_eof:
            return
        if not data:
            self.stdin_eof = True
        self.stdin_buffer += data
        await self.flush_stdin()

    async def flush_stdin(self) -> None:
        """Write what the command's stdin takes; wait while more than BUFFER is pending (the
        client's further messages wait too, as a full pipe holds its writer)."""
        while self.stdin_buffer:
            try:
                written = os.write(self.stdin_w, self.stdin_buffer)
                del self.stdin_buffer[:written]
            except BlockingIOError:
                if len(self.stdin_buffer) <= BUFFER:
                    break
                ready = self.loop.create_future()
                self.loop.add_writer(self.stdin_w, ready.set_result, None)
                try:
                    await ready
                finally:
                    self.loop.remove_writer(self.stdin_w)
            except OSError:
                self.stdin_buffer.clear()  # the command's stdin is gone
                self.stdin_eof = True
        if self.stdin_eof and not self.stdin_buffer and not self.tty:
            self.close_fd(self.stdin_w)

    def close_fd(self, fd: int) -> None:
        if fd in self.owned:
            self.owned.remove(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self.open_outputs):
            self.loop.remove_reader(fd)
        if self.ctl_open:
            self.loop.remove_reader(self.ctl.fileno())
        for fd in list(self.owned):
            self.close_fd(fd)
        self.ctl.close()


class Bridge(Channels):
    """A network session's channels over its WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, tty: bool) -> None:
        super().__init__(tty)
        self.ws = ws

    async def deliver(self, message: bytes) -> None:
        await self.ws.send_bytes(message)

    # -- from the client to the session -----------------------------------------------------

    async def receive_loop(self) -> None:
        async for message in self.ws:
            if message.type != WSMsgType.BINARY or not message.data:
                break
            channel, data = message.data[:1], message.data[1:]
            if channel == STDIN:
                await self.to_stdin(data)
            elif channel == CONTROL:
                self.to_control(data)
            else:
                break
        self.hang_up()

    def to_control(self, data: bytes) -> None:
        try:
            message: dict[str, Any] | None = decode(data)
        except ProtocolError:
            message = None
        if message is not None and self.tty and "winsize" in message:
            # The pty stands in for the caller's terminal: give it the caller's size first.
            set_winsize(self.stdin_w, message.pop("winsize"))
            data = encode(message)
        else:
            data = data.rstrip(b"\n") + b"\n"
        with contextlib.suppress(OSError):
            self.ctl.sendall(data)


async def first_request(ws: web.WebSocketResponse, digest: str) -> dict[str, Any]:
    message = await ws.receive(timeout=REQUEST_TIMEOUT_S)
    if message.type != WSMsgType.BINARY or message.data[:1] != CONTROL:
        raise BadRequest("the first message must be the exec request")
    body = message.data[1:]
    if hashlib.sha256(body).hexdigest() != digest:
        raise BadRequest("the exec request does not match the digest its credential proves")
    try:
        return decode(body)
    except ProtocolError as exc:
        raise BadRequest(f"bad exec request: {exc}") from None


async def in_own_thread(fn: Callable[..., object], *args: Any) -> None:
    """Run a session in a thread of its own, as the exec socket does: a session lasts as long as
    its command, or its wait for a wake (no limit unless the client names one), and in the API's
    pool it would hold one of the threads every request needs. What bounds these threads is the
    per-uid connection cap the session was admitted under."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the awaiting handler
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    threading.Thread(target=run, name="rxd-exec-net", daemon=True).start()
    await done


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.cancelled():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


async def exec_stream(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    if caller.door != "munge":
        raise Forbidden("this route is served on the network door only")
    digest = request.query.get("digest", "")
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise BadRequest("digest must be the request's SHA-256, 64 lowercase hex digits")
    server = request.app[EXEC_SERVER]
    key = ("uid", caller.uid)
    if not server.cap.admit(key):
        raise web.HTTPTooManyRequests(text=server.cap.refusal())
    try:
        ws = web.WebSocketResponse(max_msg_size=MAX_REQUEST + 16, autoping=True)
        await ws.prepare(request)
        try:
            data = await first_request(ws, digest)
        except (BadRequest, TimeoutError) as exc:
            text = getattr(exc, "message", None) or "the exec request did not arrive in time"
            await ws.send_bytes(CONTROL + encode({"error": f"exec protocol error: {text}"}))
            await ws.close()
            return ws
        winsize = data.pop("winsize", None)
        bridge = Bridge(ws, tty=data.get("tty") is True)
        if bridge.tty:
            set_winsize(bridge.stdin_w, winsize)
        session = Session(server, bridge.session_conn)
        bridge.start_reading()
        sender = asyncio.create_task(bridge.send_loop())
        receiver = asyncio.create_task(bridge.receive_loop())
        try:
            # The session thread owns session_fds and closes them; then the outputs end.
            await in_own_thread(session.serve_network, caller, data, bridge.session_fds)
            await bridge.wait_drained()
            await sender
        finally:
            receiver.cancel()
            sender.cancel()
            bridge.close()
            await ws.close()
        return ws
    finally:
        server.cap.release(key)


routes = [web.get(route.EXEC, exec_stream)]
