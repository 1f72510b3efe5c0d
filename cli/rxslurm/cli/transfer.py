"""Streaming a big body to or from rxd (export and import archives), with progress.

The JSON client (client.py) holds a whole answer in memory; an archive may be many GiB, so here
the HTTP exchange is read and written a chunk at a time. An export answer is chunked and ends
with its last (empty) chunk: one without it was cut short (rxd's script failed), never a whole
archive. An upload through the network door carries a credential bound to the archive's digest
(rxd's door_stream.py checks it after the last byte). Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO

from rxslurm.cli.client import ApiError, Client, ClientError, DaemonUnavailable
from rxslurm.cli.door import DoorError, munge_header

CHUNK = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").digest()
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
    client: Client, method: str, route: str, body_sha256: Callable[[], bytes]
) -> tuple[socket.socket, dict[str, str]]:
    """A connected socket to rxd, and the headers that prove who asks (network door: the
    credential binds the body's digest, asked for only there)."""
    door = client.door
    if door is None:
        raise ClientError(client.door_error)
    headers: dict[str, str] = {}
    if door.kind == "network":
        digest = body_sha256()
        try:
            name, credential = munge_header(door, method, route, b"", digest)
        except DoorError as exc:
            raise ClientError(str(exc)) from None
        headers[name] = credential
        if method == "POST":
            from rxslurm.slurm.request_binding import BODY_DIGEST_HEADER  # network path only

            # rxd checks the binding before the body (door_stream.py), the body after it.
            headers[BODY_DIGEST_HEADER] = digest.hex()
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
    sock, proof = _connect(client, "GET", route, lambda: EMPTY_SHA256)
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
    """POST ``size`` bytes of ``source`` (a seekable file) to ``route``; rxd's JSON answer.

    Over the network door the file is read twice: once for the digest its credential binds
    (rxd checks it after the last byte and refuses an upload that does not match), once to
    send it."""
    start = source.tell()

    def digest() -> bytes:
        hasher = hashlib.sha256()
        left = size
        while left and (chunk := source.read(min(CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)
        source.seek(start)
        return hasher.digest()

    sock, proof = _connect(client, "POST", route, digest)
    with sock:
        head = _head(
            "POST",
            route,
            {"Content-Type": "application/gzip", "Content-Length": str(size), **proof},
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
