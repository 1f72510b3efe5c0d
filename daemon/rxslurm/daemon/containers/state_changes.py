"""Waking whoever waits for a container's state: notified when a change commits, not polled.

``change_state`` rings every watcher of the container once its transaction has committed (the
ledger's after-commit callbacks), so a watcher that then reads the ledger sees the new state. A
watch is a pipe, so a thread can wait for a change and for a client's message in one poll (the
exec server does). A wake-up says only "look again": watchers re-read the ledger and decide.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Iterator

from rxslurm.daemon.ledger.store import LedgerDatabase


class Watch:
    """Readable (``fileno``) once the watched container changed since the last ``clear``."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        # One byte is enough: a full pipe already says "changed".
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass

    def wait(self, timeout: float | None) -> bool:
        """Whether a change came within ``timeout`` seconds (None: wait for one); cleared."""
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        ready = bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        self.clear()
        return ready

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class StateChanges:
    """The watches of every container, rung by ``changed``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, set[Watch]] = {}

    @contextlib.contextmanager
    def watch(self, container_id: int) -> Iterator[Watch]:
        """A watch on the container for the ``with`` block. Take it BEFORE reading the state:
        a change between the read and the wait then still rings it."""
        watch = Watch()
        with self._lock:
            self._watches.setdefault(container_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                found = self._watches.get(container_id)
                if found is not None:
                    found.discard(watch)
                    if not found:
                        del self._watches[container_id]
            watch.close()

    def changed(self, container_id: int) -> None:
        with self._lock:
            watches = list(self._watches.get(container_id, ()))
        for watch in watches:
            watch.ring()


# One per process: change_state rings it, whichever ledger connection made the change. A ring
# for another ledger's container of the same id (tests run several in one process) only makes
# its watcher look again.
STATE_CHANGES = StateChanges()


def ring_after_commit(db: LedgerDatabase, container_id: int) -> None:
    """Wake the container's watchers once the caller's transaction has committed (a change of
    its state, or of the reason it waits for, that a watcher shows)."""
    db.after_commit.append(lambda: STATE_CHANGES.changed(container_id))
