"""Reading the holder's status file, which sits in a folder its runtime user owns.

rxd runs as root, and the runtime user (or anything running as them, a container included) can
put anything at ``job-N.status``: a FIFO, a symlink to ``/dev/zero`` or to a root-only file, a
sparse file of many gigabytes. So the file is opened without following symlinks and without
blocking, must be a regular file of the runtime user, and at most ``MAX_BYTES`` are read. The read
runs on a worker thread with a deadline: should it hang anyway (a user's FUSE mount), only that
user's containers wait, never the reconciler.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from rxslurm.daemon.text_checks import MAX_REPORTED_CHARS, reported_line

log = logging.getLogger("rxslurm.holder_status")

# The holder writes one short line ("running rx-p-42", "error: ..."); a page is plenty.
MAX_BYTES = 4096
READ_TIMEOUT_S = 2.0
# The words holder.sh starts its line with; anything else was not written by it.
WORDS = frozenset({"starting", "running", "stopping", "stopped", "error"})
# The line reaches the ledger (last_error, the instance name) and every member's terminal.
MAX_LINE_CHARS = MAX_REPORTED_CHARS
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class Kind(StrEnum):
    LINE = "line"  # the holder's line, in ``text``
    MISSING = "missing"  # not written yet
    REFUSED = "refused"  # not something the holder wrote; why in ``text``
    STUCK = "stuck"  # the read did not return in time; why in ``text``


@dataclass(frozen=True)
class HolderStatus:
    kind: Kind
    text: str = ""

    @property
    def line(self) -> str:
        """The holder's line, "" unless there is one."""
        return self.text if self.kind == Kind.LINE else ""


def status_path(state_dir: str, job_id: int) -> str:
    return os.path.join(state_dir, f"job-{int(job_id)}.status")


def read_status_file(state_dir: str, job_id: int, uid: int) -> HolderStatus:
    """Read ``job-<job_id>.status`` in ``state_dir`` as root, safely; never raises OSError."""
    name = f"job-{int(job_id)}.status"
    data = read_user_file(state_dir, name, uid)
    return data if isinstance(data, HolderStatus) else parse_status(data, name)


def read_user_file(state_dir: str, name: str, uid: int) -> bytes | HolderStatus:
    """The bytes of the holder's small file ``name`` in ``state_dir`` (a regular file of ``uid``
    in a folder of ``uid``, at most MAX_BYTES, no link followed), else why not; never raises
    OSError."""
    try:
        dir_fd = os.open(state_dir, _DIR_FLAGS)
    except OSError as exc:
        return _refused(f"its folder {state_dir}", exc)
    try:
        owner = os.fstat(dir_fd).st_uid
        if owner != uid:
            return HolderStatus(Kind.REFUSED, f"{state_dir} belongs to uid {owner}, not {uid}")
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return HolderStatus(Kind.MISSING)
        except OSError as exc:
            return _refused(name, exc)
        try:
            return _read_open(fd, name, uid)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _refused(what: str, exc: OSError) -> HolderStatus:
    if exc.errno == errno.ELOOP:
        return HolderStatus(Kind.REFUSED, f"{what} is a symbolic link")
    if exc.errno == errno.ENXIO:
        return HolderStatus(Kind.REFUSED, f"{what} is not a regular file")
    if exc.errno == errno.ENOTDIR:  # O_DIRECTORY|O_NOFOLLOW on a symlink says so too
        return HolderStatus(Kind.REFUSED, f"{what} is not a folder")
    return HolderStatus(Kind.REFUSED, f"cannot open {what}: {os.strerror(exc.errno or 0)}")


def _read_open(fd: int, name: str, uid: int) -> bytes | HolderStatus:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return HolderStatus(Kind.REFUSED, f"{name} is not a regular file")
    if info.st_uid != uid:
        return HolderStatus(Kind.REFUSED, f"{name} belongs to uid {info.st_uid}, not {uid}")
    if info.st_size > MAX_BYTES:
        return HolderStatus(Kind.REFUSED, f"{name} is larger than {MAX_BYTES} bytes")
    # The size can change after fstat: the read itself is bounded too.
    data = os.read(fd, MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        return HolderStatus(Kind.REFUSED, f"{name} is larger than {MAX_BYTES} bytes")
    return data


def parse_status(data: bytes, name: str = "the status file") -> HolderStatus:
    """The first line, if it is one holder.sh writes; control and bidi characters never pass
    (each becomes "?"), and it is cut to MAX_LINE_CHARS."""
    if b"\0" in data:
        return HolderStatus(Kind.REFUSED, f"{name} holds binary data")
    line = data.decode("utf-8", "replace").split("\n", 1)[0].strip()
    if not line:
        return HolderStatus(Kind.MISSING)
    word = re.split(r"[\s:]", line, maxsplit=1)[0]
    if word not in WORDS:
        return HolderStatus(Kind.REFUSED, f"{name} holds no status line the holder writes")
    return HolderStatus(Kind.LINE, reported_line(line, MAX_LINE_CHARS))


@dataclass
class _Request:
    state_dir: str
    job_id: int
    uid: int
    done: threading.Event = field(default_factory=threading.Event)
    result: HolderStatus | None = None
    abandoned: bool = False


class StatusReader:
    """Reads status files on a worker thread and waits at most ``timeout_s`` for each.

    A worker that overruns is left to finish on its own (it may never), and the uid whose file
    it reads gets no new read until it does: a user can stall only their own containers, and
    the threads left behind are at most one per such user.
    """

    def __init__(
        self,
        timeout_s: float = READ_TIMEOUT_S,
        read: Callable[[str, int, int], HolderStatus] = read_status_file,
    ) -> None:
        self.timeout_s = timeout_s
        self._read = read
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[_Request | None] | None = None
        self._stuck: set[int] = set()

    def stuck_uids(self) -> set[int]:
        with self._lock:
            return set(self._stuck)

    def read(self, state_dir: str, job_id: int, uid: int) -> HolderStatus:
        request = _Request(state_dir, job_id, uid)
        with self._lock:
            if uid in self._stuck:
                return HolderStatus(
                    Kind.STUCK, "an earlier read of this user's status file has not returned"
                )
            if self._inbox is None:
                self._inbox = queue.SimpleQueue()
                threading.Thread(
                    target=self._work, args=(self._inbox,), name="holder-status", daemon=True
                ).start()
            inbox = self._inbox
        inbox.put(request)
        if request.done.wait(self.timeout_s):
            assert request.result is not None
            return request.result
        with self._lock:
            if request.done.is_set():  # it finished just now
                assert request.result is not None
                return request.result
            request.abandoned = True
            self._stuck.add(uid)
            if self._inbox is inbox:
                # Later reads go to a fresh worker; this one ends after the read it hangs in.
                self._inbox = None
                inbox.put(None)
        log.warning(
            "reading a status file did not return in time",
            extra={"path": status_path(state_dir, job_id), "uid": uid},
        )
        return HolderStatus(Kind.STUCK, f"reading the status file took over {self.timeout_s:g} s")

    def _work(self, inbox: queue.SimpleQueue[_Request | None]) -> None:
        while (request := inbox.get()) is not None:
            try:
                result = self._read(request.state_dir, request.job_id, request.uid)
            except Exception as exc:  # a worker that died would leave every read stuck
                result = HolderStatus(Kind.REFUSED, f"cannot read the status file: {exc}")
            with self._lock:
                request.result = result
                request.done.set()
                if request.abandoned:
                    self._stuck.discard(request.uid)
