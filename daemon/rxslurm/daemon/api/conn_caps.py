"""How many connections one caller may hold open on rxd's sockets at once.

rxd is root and every local user may connect: without a cap, one user's idle connections use up
rxd's descriptors and threads and nobody else is served. The caller is known at accept (the
kernel's SO_PEERCRED for Unix sockets, the peer address for TCP), so a connection over the cap
is answered at once and closed, before anything is read from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

from rxslurm.daemon.api.peercred import peer_credentials

log = logging.getLogger("rxslurm.daemon")


def caller_key(sock: socket.socket | None) -> Hashable:
    """Whom a connection counts against: the peer's uid, or its address for TCP."""
    if sock is None:
        return "unknown"
    if sock.family == socket.AF_UNIX:
        try:
            return ("uid", peer_credentials(sock)[1])
        except OSError:
            return "unknown"
    try:
        return ("addr", sock.getpeername()[0])
    except OSError:
        return "unknown"


class ConnectionCap:
    """Counts open connections per caller; thread-safe, as the exec server's threads share it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[Hashable] = Counter()
        self._lock = threading.Lock()
        self._refused: Counter[Hashable] = Counter()

    def admit(self, key: Hashable) -> bool:
        with self._lock:
            if self._open[key] >= self.limit:
                self._refused[key] += 1
                # One log line per 100 refusals: a flood must not flood the journal as well.
                if self._refused[key] % 100 == 1:
                    log.warning(
                        "connection refused: too many open",
                        extra={"caller": str(key), "limit": self.limit},
                    )
                return False
            self._open[key] += 1
            return True

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    def count(self, key: Hashable) -> int:
        with self._lock:
            return self._open[key]

    def refusal(self) -> str:
        return (
            f"too many open connections to rxd from your user (limit {self.limit}); "
            "close some and try again"
        )


def http_refusal(message: str) -> bytes:
    """A complete HTTP answer for a refused connection, in the API's error format."""
    body = json.dumps({"error": {"code": "too_many_connections", "message": message}}) + "\n"
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
        f"{body}"
    ).encode()


class _Capped(asyncio.Protocol):
    """Passes everything to the real protocol, or answers 503 and closes when over the cap."""

    def __init__(self, cap: ConnectionCap, factory: Callable[[], asyncio.Protocol]) -> None:
        self.cap = cap
        self.factory = factory
        self.inner: asyncio.Protocol | None = None
        self.key: Hashable = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.key = caller_key(transport.get_extra_info("socket"))
        if not self.cap.admit(self.key):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(http_refusal(self.cap.refusal()))
            transport.close()  # after the answer is written
            return
        self.inner = self.factory()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.cap.release(self.key)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


def capped(cap: ConnectionCap, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for asyncio servers that enforces `cap` around `factory`'s protocols."""
    return lambda: _Capped(cap, factory)
