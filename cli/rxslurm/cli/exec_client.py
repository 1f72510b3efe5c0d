"""The client side of rxd's exec socket: hand over our stdio, relay signals, return the exit code.

The protocol is in docs/exec.md, its wire format in rxslurm/protocol/exec_wire.py. Standard
library only: `rxctl exec` must start fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import Any

from rxslurm.protocol.exec_wire import (
    MAX_MESSAGE,
    SIGNAL_NAMES,
    LineReader,
    ProtocolError,
    encode,
)


class ExecError(Exception):
    """The session failed; the message is one line for people, `code` rxd's API code for a
    refusal (None for failures of the client's own, or an rxd that sends none)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, message: dict[str, Any]) -> ExecError:
        """rxd's `{"error": ..., "code": ...}` message."""
        code = message.get("code")
        return cls(str(message["error"]), code if isinstance(code, str) else None)


class UseAgent(Exception):
    """rxd says: run the command through the container's exec agent (cli/agent_client.py)."""

    def __init__(self, grant: Any) -> None:
        super().__init__("the container's exec agent runs the command")
        self.grant = grant if isinstance(grant, dict) else {}


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ExecError(f"rxd is not running (nothing listens on {path})") from None
    except PermissionError:
        sock.close()
        raise ExecError(f"cannot reach rxd: permission denied on {path}") from None
    except OSError as exc:
        sock.close()
        raise ExecError(f"cannot reach rxd on {path}: {exc}") from None
    return sock


@contextlib.contextmanager
def forwarding_signals(sock: socket.socket) -> Iterator[None]:
    """While inside, the forwarded signals become messages to rxd instead of ending rxctl."""

    def forward(signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between bytecodes of the main thread: a plain send is safe.
        with contextlib.suppress(OSError):
            sock.sendall(encode({"signal": SIGNAL_NAMES[signal.Signals(signum)]}))

    with handling_signals(forward):
        yield


@contextlib.contextmanager
def handling_signals(
    handler: Callable[[int, FrameType | None], Any] | signal.Handlers,
    signums: Iterable[int] = SIGNAL_NAMES,
) -> Iterator[None]:
    """While inside, `signums` (by default the signals the protocol forwards) go to `handler`;
    after, back to whatever had them before."""
    previous = {}
    for signum in signums:
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, saved in previous.items():
            signal.signal(signum, saved)


@contextlib.contextmanager
def terminal_restored(fd: int) -> Iterator[None]:
    """srun --pty puts the terminal in raw mode; if srun dies, put it back as it was."""
    saved = None
    if os.isatty(fd):
        import termios

        with contextlib.suppress(termios.error):
            saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        if saved is not None:
            import termios

            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(
    path: str,
    request: dict[str, Any],
    *,
    stdio: Sequence[int] = (0, 1, 2),
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_stopped: Callable[[str], None] | None = None,
    on_sent: Callable[[], None] | None = None,
    tick_s: float = 1.0,
) -> int:
    """Run one session; the command's exit status, or ExecError.

    on_progress gets each progress message while the container wakes, on_tick is called about
    every tick_s seconds meanwhile, on_ready once the command is about to start after waking,
    on_stopped rxd's words when the session ends because the caller stopped waiting (Ctrl-C),
    on_sent once the request is on its way (work done there overlaps rxd's).
    """
    sock = connect(path)
    reader = LineReader()
    try:
        with forwarding_signals(sock), terminal_restored(stdio[0]):
            try:
                socket.send_fds(sock, [encode(request)], list(stdio))
            except OSError as exc:
                raise ExecError(f"cannot talk to rxd on {path}: {exc}") from None
            if on_sent:
                on_sent()
            sock.settimeout(tick_s if on_tick else None)
            while True:
                try:
                    data = sock.recv(MAX_MESSAGE)
                except TimeoutError:
                    if on_tick:
                        on_tick()
                    continue
                except OSError as exc:
                    raise ExecError(f"lost the connection to rxd: {exc}") from None
                if not data:
                    raise ExecError("rxd ended the session without an exit status; see its log")
                for message in _replies(reader, data):
                    if "agent" in message:
                        raise UseAgent(message["agent"])
                    if "exit" in message:
                        if "stopped" in message and on_stopped:
                            on_stopped(str(message["stopped"]))
                        return int(message["exit"])
                    if "error" in message:
                        raise ExecError.of(message)
                    if "progress" in message and on_progress:
                        on_progress(message)
                    if message.get("ready"):
                        if on_ready:
                            on_ready()
                        sock.settimeout(None)
                        sock.sendall(encode({"go": True}))
    finally:
        sock.close()


def _replies(reader: LineReader, data: bytes) -> list[dict[str, Any]]:
    try:
        return reader.feed(data)
    except ProtocolError as exc:
        raise ExecError(f"rxd broke the exec protocol: {exc}") from None


def window_size(fd: int) -> list[int] | None:
    """The terminal's [rows, cols], if fd is one with a size."""
    import fcntl
    import struct
    import termios

    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return [rows, cols] if rows and cols else None


def write_all(fd: int, data: bytes) -> None:
    """All of data to fd; a reader that went away takes the rest (as a closed pipe would)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[written:]


def terminal_type() -> str | None:
    term = os.environ.get("TERM")
    return term if term and len(term) <= 64 else None
