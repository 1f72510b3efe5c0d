"""Root's relay between an exec caller's stdio and srun's: bounded, and never blocked by either.

The caller's descriptors stay in rxd (root). srun runs as the project's runtime user, who may be
someone else: given the caller's terminal, that user could take it from their own srun process
(pidfd_getfd, ptrace) and read the caller's later keystrokes. So srun gets pipes, or a pty that
rxd allocates for a terminal session, and rxd copies between them and the caller's descriptors.

Copies never block: a caller whose output is never read (a full pipe) must not stop rxd from
noticing a disconnect or killing a step. The caller's descriptors share their file status flags
with the caller's own process, so rxd cannot just set O_NONBLOCK on them; it uses a private view
of each instead (see CallerEnd). Each direction buffers at most BUFFER bytes; beyond that rxd
stops reading its source, which holds the writer back exactly as a full pipe would.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import socket
import stat
import termios
import tty
from collections.abc import Callable

BUFFER = 64 * 1024
_WINSIZE = b"\0" * 8  # struct winsize: rows, columns, x and y pixels, four shorts
_IN = select.POLLIN
_GONE = select.POLLHUP | select.POLLERR


class CallerEnd:
    """A non-blocking way to read or write one of the caller's descriptors, owned by rxd.

    A pipe, FIFO or terminal is reopened through /proc/self/fd (the same object, a new open file
    description whose O_NONBLOCK is rxd's alone), in the direction the caller's own descriptor
    allows: reopening as root must never give more access than the caller passed. A socket is
    used with MSG_DONTWAIT. Anything else (a regular file, /dev/null) does not block on a
    descriptor that poll reported ready and is used as it is.
    """

    def __init__(self, fd: int, writing: bool) -> None:
        info = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        allowed = (os.O_WRONLY, os.O_RDWR) if writing else (os.O_RDONLY, os.O_RDWR)
        if mode not in allowed:
            raise OSError(errno.EBADF, f"not open for {'writing' if writing else 'reading'}")
        self.sock: socket.socket | None = None
        self.fd = -1
        if stat.S_ISSOCK(info.st_mode):
            self.sock = socket.socket(fileno=os.dup(fd))
            self.fd = self.sock.fileno()
        elif stat.S_ISFIFO(info.st_mode) or (stat.S_ISCHR(info.st_mode) and os.isatty(fd)):
            flags = (os.O_WRONLY if writing else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOCTTY
            try:
                self.fd = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
            except OSError:
                # A FIFO without a reader cannot be opened for writing; writes would fail anyway.
                self.fd = os.dup(fd)
        else:
            self.fd = os.dup(fd)

    def read(self, size: int) -> bytes:
        if self.sock is not None:
            return self.sock.recv(size, socket.MSG_DONTWAIT)
        return os.read(self.fd, size)

    def write(self, data: bytes | memoryview) -> int:
        if self.sock is not None:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        return os.write(self.fd, data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class Pump:
    """Copies one direction through a bounded buffer, a chunk at a time when poll says so."""

    def __init__(
        self,
        src: int,
        read: Callable[[int], bytes],
        dest: int,
        write: Callable[[bytes | memoryview], int],
        *,
        transform: Callable[[bytes], bytes] = lambda chunk: chunk,
        on_eof: Callable[[], None] = lambda: None,
        on_dest_gone: Callable[[], None] = lambda: None,
    ) -> None:
        self.src, self.read, self.dest, self.write = src, read, dest, write
        self.transform = transform
        self.on_eof = on_eof
        self.on_dest_gone = on_dest_gone
        self.buffer = bytearray()
        self.reading = True
        self.writing = True
        self.lossy = False
        self.moved = 0  # bytes written so far: progress, for a caller who reads slowly
        self._ended = False

    def drop_when_full(self) -> None:
        """From now on, what the destination does not take at once is dropped: the source (srun,
        ending its step) must never wait for a caller who has gone."""
        self.lossy = True

    def interest(self) -> list[tuple[int, int]]:
        wanted = []
        if self.reading and (len(self.buffer) < BUFFER or self.lossy):
            wanted.append((self.src, select.POLLIN))
        if self.buffer and self.writing:
            wanted.append((self.dest, select.POLLOUT))
        return wanted

    @property
    def drained(self) -> bool:
        """The source has ended and everything read was written (or could not be, or need not)."""
        return not self.reading and (not self.buffer or self.lossy)

    def ready(self, fd: int, revents: int) -> None:
        if fd == self.src and self.reading and revents & (_IN | _GONE):
            self.fill()
        if fd == self.dest and self.buffer and revents & (select.POLLOUT | _GONE):
            self.flush()
        self._check_end()

    def fill(self) -> None:
        if self.lossy and len(self.buffer) >= BUFFER:
            if self.writing:
                self.flush()
            self.buffer.clear()
        try:
            chunk = self.read(BUFFER - len(self.buffer))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # EIO: a pty whose other side is closed has ended
        if not chunk:
            self.reading = False
            return
        if self.writing:
            self.buffer += self.transform(chunk)

    def flush(self) -> None:
        try:
            written = self.write(memoryview(self.buffer)[:BUFFER])
        except BlockingIOError:
            return
        except OSError:
            # The destination is gone (EPIPE, a hung-up terminal): stop copying to it.
            self.writing = False
            self.buffer.clear()
            self.on_dest_gone()
            return
        del self.buffer[:written]
        self.moved += written

    def _check_end(self) -> None:
        if self.drained and not self._ended:
            self._ended = True
            self.on_eof()


def poll_interest(pumps: list[Pump], extra: dict[int, int]) -> select.poll:
    """One poll object for everything the pumps (and the caller of this) wait for."""
    events: dict[int, int] = dict(extra)
    for pump in pumps:
        for fd, event in pump.interest():
            events[fd] = events.get(fd, 0) | event
    poller = select.poll()
    for fd, event in events.items():
        poller.register(fd, event)
    return poller


def dispatch(pumps: list[Pump], fd: int, revents: int) -> None:
    for pump in pumps:
        if fd in (pump.src, pump.dest):
            pump.ready(fd, revents)


class CallerTerminal:
    """The caller's terminal in raw mode while a pty session runs (as srun --pty did to it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list | None = None  # type: ignore[type-arg]

    def make_raw(self) -> None:
        with contextlib.suppress(termios.error):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        if self.saved is not None:
            with contextlib.suppress(termios.error):
                # TCSANOW: TCSADRAIN would wait for a terminal that may never take its output.
                termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            self.saved = None

    def copy_size_to(self, pty_fd: int | None) -> None:
        """Give the pty the caller's window size (srun reads it from its terminal on SIGWINCH)."""
        if pty_fd is None:
            return
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(self.fd, termios.TIOCGWINSZ, _WINSIZE)
            fcntl.ioctl(pty_fd, termios.TIOCSWINSZ, size)


def _nothing() -> None:
    pass


class Plumbing:
    """The step's stdio and rxd's pumps between it and the caller's descriptors.

    Without a terminal: three pipes. With one: a pty rxd allocates (stdin and stdout of srun
    --pty), the caller's terminal raw while it runs, and a pipe for srun's own stderr.
    """

    def __init__(
        self, caller_fds: list[int], tty: bool, err_transform: Callable[[bytes], bytes]
    ) -> None:
        self._owned: set[int] = set()
        self.ends: list[CallerEnd] = []
        self.terminal: CallerTerminal | None = None
        self.pty: int | None = None
        try:
            self._build(caller_fds, tty, err_transform)
        except BaseException:
            self.close()
            raise

    def _build(
        self, caller_fds: list[int], tty: bool, err_transform: Callable[[bytes], bytes]
    ) -> None:
        for fd, writing in zip(caller_fds, (False, True, True), strict=True):
            self.ends.append(CallerEnd(fd, writing))
        caller_in, caller_out, caller_err = self.ends
        if tty:
            master, slave = os.openpty()  # both close-on-exec; the child gets slave as 0 and 1
            self._own(master, slave)
            self.pty = master
            self.terminal = CallerTerminal(caller_in.fd)
            self.terminal.copy_size_to(master)
            self.child_stdin = self.child_stdout = slave
            to_child = from_child = master
            # One descriptor both ways: it is closed with the rest, at the end.
            close_to_child = close_from_child = _nothing
        else:
            in_r, to_child = os.pipe2(os.O_CLOEXEC)
            from_child, out_w = os.pipe2(os.O_CLOEXEC)
            self._own(in_r, to_child, from_child, out_w)
            self.child_stdin, self.child_stdout = in_r, out_w
            # The caller's input ended: so does the command's. The caller's output is gone: srun
            # gets EPIPE, as it would have writing there itself.
            close_to_child = functools.partial(self.close_fd, to_child)
            close_from_child = functools.partial(self.close_fd, from_child)
        err_read, self.child_stderr = os.pipe2(os.O_CLOEXEC)
        self._own(err_read, self.child_stderr)
        for fd in (to_child, from_child, err_read):
            os.set_blocking(fd, False)
        stdin = Pump(
            caller_in.fd,
            caller_in.read,
            to_child,
            lambda data: os.write(to_child, data),
            on_eof=close_to_child,
        )
        # The command stopped reading its input: so does rxd (what the caller typed stays theirs).
        stdin.on_dest_gone = lambda: setattr(stdin, "reading", False)
        stdout = Pump(
            from_child,
            lambda size: os.read(from_child, size),
            caller_out.fd,
            caller_out.write,
            on_eof=close_from_child,
        )
        if not tty:
            stdout.on_dest_gone = lambda: setattr(stdout, "reading", False)
        # A caller's stderr that is gone or never drains: srun's is still read (and dropped).
        stderr = Pump(
            err_read,
            lambda size: os.read(err_read, size),
            caller_err.fd,
            caller_err.write,
            transform=err_transform,
        )
        self.pumps = [stdin, stdout, stderr]
        self.outputs = [stdout, stderr]

    def _own(self, *fds: int) -> None:
        self._owned.update(fds)

    def close_fd(self, fd: int) -> None:
        if fd in self._owned:
            self._owned.discard(fd)
            os.close(fd)

    def child_started(self) -> None:
        """The child has its copies of its ends; rxd's would keep the streams from ending."""
        for fd in {self.child_stdin, self.child_stdout, self.child_stderr}:
            self.close_fd(fd)

    @property
    def output_drained(self) -> bool:
        return all(pump.drained for pump in self.outputs)

    @property
    def output_moved(self) -> int:
        return sum(pump.moved for pump in self.outputs)

    def close(self) -> None:
        if self.terminal is not None:
            self.terminal.restore()
        for fd in list(self._owned):
            self.close_fd(fd)
        for end in self.ends:
            end.close()
