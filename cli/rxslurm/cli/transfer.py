"""Streaming a big body to or from rxd (export and import archives), with progress.

The JSON client (client.py) holds a whole answer in memory; an archive may be many GiB, so here
the HTTP exchange is read and written a chunk at a time. An export answer is chunked and ends
with its last (empty) chunk: one without it was cut short (rxd's script failed), never a whole
archive. Standard library only.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO

from rxslurm.cli.client import ApiError, Client, ClientError, DaemonUnavailable
from rxslurm.cli.door import DoorError, munge_header

CHUNK = 1 << 20
MAX_ERROR_BODY = 1 << 20

# Bytes so far -> None (a progress line on a terminal; nothing otherwise).
Progress = Callable[[int], None]


class _Reader:
    """Buffered reads of a socket: lines of the head, then exact counts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(CHUNK)
        except OSError as exc:  # so that an OSError out of here is the caller's file's
            raise ClientError(f"the connection to rxd broke: {exc}") from None
        self.buf += data
        return bool(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536 or not self._more():
                raise ClientError("rxd's answer ended early")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise ClientError("rxd's answer was cut short")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def rest(self, limit: int) -> bytes:
        while len(self.buf) <= limit and self._more():
            pass
        return self.buf[:limit]


def _connect(
    client: Client, method: str, route: str, body_for_binding: bytes
) -> tuple[socket.socket, dict[str, str]]:
    """A connected socket to rxd, and the headers that prove who asks (network door)."""
    door = client.door
    if door is None:
        raise ClientError(client.door_error)
    headers: dict[str, str] = {}
    if door.kind == "network":
        try:
            name, credential = munge_header(door, method, route, body_for_binding)
        except DoorError as exc:
            raise ClientError(str(exc)) from None
        headers[name] = credential
        address: str | tuple[str, int] = door.host_port
    else:
        address = door.address
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    if not isinstance(address, str) and ":" in address[0]:
        family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(client.timeout)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(f"cannot reach rxd on {door.address}: {exc}") from None
    return sock, headers


def _head(method: str, route: str, extra: dict[str, str]) -> bytes:
    lines = [f"{method} {route} HTTP/1.1", "Host: rxd", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status_and_headers(reader: _Reader) -> tuple[int, dict[str, str]]:
    status_line = reader.line().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientError(f"not an HTTP answer from rxd: {status_line[:60]!r}")
    headers = {}
    while line := reader.line():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _error(status: int, headers: dict[str, str], reader: _Reader) -> ApiError:
    # rxd's refusals come before any of the archive, as JSON with a Content-Length.
    raw = reader.rest(MAX_ERROR_BODY)
    try:
        error = json.loads(raw).get("error", {})
    except (ValueError, AttributeError):
        error = {}
    return ApiError(
        status, str(error.get("code", "error")), str(error.get("message", f"HTTP {status}"))
    )


def download(
    client: Client,
    route: str,
    open_out: Callable[[], AbstractContextManager[IO[bytes]]],
    progress: Progress,
) -> int:
    """GET ``route`` and write its (chunked) body to what ``open_out`` opens, once rxd said yes
    (a refusal writes nothing); the bytes written."""
    sock, proof = _connect(client, "GET", route, b"")
    with sock:
        try:
            sock.sendall(_head("GET", route, proof))
        except OSError as exc:
            raise ClientError(f"the connection to rxd broke: {exc}") from None
        reader = _Reader(sock)
        status, headers = _status_and_headers(reader)
        if status >= 400:
            raise _error(status, headers, reader)
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise ClientError("rxd's export answer is not chunked")
        written = 0
        with open_out() as out:
            while True:
                size_line = reader.line().split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise ClientError("a bad chunk in rxd's answer") from None
                if size == 0:
                    return written
                out.write(reader.exactly(size))
                reader.exactly(2)
                written += size
                progress(written)


def upload(client: Client, route: str, source: IO[bytes], size: int, progress: Progress) -> object:
    """POST ``size`` bytes of ``source`` to ``route``; rxd's JSON answer."""
    if client.door is not None and client.door.kind == "network":
        raise ClientError(
            "an import streams the archive to rxd's local socket: run it on rxd's host "
            "(the network door takes small bodies only)"
        )
    sock, _ = _connect(client, "POST", route, b"")
    with sock:
        head = _head(
            "POST",
            route,
            {"Content-Type": "application/gzip", "Content-Length": str(size)},
        )
        # rxd reads for as long as the script unpacks; the answer comes after the last byte.
        sock.settimeout(None)
        sent = 0
        try:
            sock.sendall(head)
            while sent < size and (chunk := source.read(min(CHUNK, size - sent))):
                sock.sendall(chunk)
                sent += len(chunk)
                progress(sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # rxd answered before reading it all (a refusal): read why
        reader = _Reader(sock)
        status, headers = _status_and_headers(reader)
        if status >= 400:
            raise _error(status, headers, reader)
        raw = reader.rest(MAX_ERROR_BODY)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raise ClientError("rxd's import answer is chunked; expected JSON")
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(f"rxd sent a reply that is not JSON (HTTP {status})") from None
