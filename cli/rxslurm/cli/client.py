"""The API client: JSON over HTTP on rxd's Unix socket (or its network door, rxslurm/cli/door.py),
stdlib only so rxctl starts fast."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from rxslurm.cli.door import SOCKET_ENV, Door, DoorError, find_door, munge_header
from rxslurm.protocol.paths import DEFAULT_SOCKET


class ClientError(Exception):
    """Base of everything the client raises; the message is one line for people."""


class DaemonUnavailable(ClientError):
    """Nothing answers on the socket."""


class ApiError(ClientError):
    """rxd answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


MAX_REPLY = 64 * 1024 * 1024


class _BadReply(Exception):
    """The bytes rxd sent are not an HTTP/1.1 answer."""


def http_request(
    address: str | tuple[str, int],
    method: str,
    route: str,
    body: bytes | None,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with rxd: (status, body).

    `address` is the Unix socket's path, or (host, port) of the network door.

    http.client would do, but it imports email and ssl, which is a third of rxctl's start-up.
    rxd answers with a Content-Length or chunked, and `Connection: close` ends the answer.
    """
    head = [f"{method} {route} HTTP/1.1", "Host: rxd", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    if not isinstance(address, str) and ":" in address[0]:
        family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(request)
        chunks = []
        received = 0
        while data := sock.recv(65536):
            chunks.append(data)
            received += len(data)
            if received > MAX_REPLY:
                raise _BadReply("the reply is too long")
    return parse_response(b"".join(chunks))


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.1 response."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise _BadReply("the reply ended early")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _BadReply(f"not an HTTP reply: {status_line[:60]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return int(parts[1]), _unchunk(rest)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length):
            raise _BadReply("the reply ended early")
        rest = rest[: int(length)]
    return int(parts[1]), rest


def _unchunk(data: bytes) -> bytes:
    body: list[bytes] = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise _BadReply("a bad chunk in the reply") from None
        if not sep or len(data) < size:
            raise _BadReply("the reply ended early")
        if size == 0:
            return b"".join(body)
        body.append(data[:size])
        data = data[size + 2 :]


def socket_path(flag: str | None = None) -> str:
    return flag or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class Client:
    def __init__(self, path: str | None = None, timeout: float = 60.0) -> None:
        self.timeout = timeout
        try:
            self.door: Door | None = find_door(path)
            self.door_error = ""
        except DoorError as exc:  # reported by the first request, as a one-line error
            self.door, self.door_error = None, str(exc)
        # The local socket (exec is served beside it), even when requests take the network door.
        self.path = (
            self.door.address if self.door and self.door.kind == "socket" else DEFAULT_SOCKET
        )

    def get(self, route: str) -> Any:
        return self.request("GET", route)

    def post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", route, body or {})

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        if self.door is None:
            raise ClientError(self.door_error)
        payload = None if body is None else json.dumps(body).encode()
        headers: dict[str, str] = {}
        address: str | tuple[str, int] = self.door.address
        if self.door.kind == "network":
            try:
                name, credential = munge_header(self.door, method, route, payload or b"")
            except DoorError as exc:
                raise ClientError(str(exc)) from None
            headers[name] = credential
            address = self.door.host_port
        where = self.door.address
        try:
            status, raw = http_request(address, method, route, payload, self.timeout, headers)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(f"rxd is not running (nothing listens on {where})") from None
        except PermissionError:
            raise DaemonUnavailable(f"cannot reach rxd: permission denied on {where}") from None
        except (OSError, _BadReply) as exc:
            raise DaemonUnavailable(f"cannot reach rxd on {where}: {exc}") from None
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ClientError(f"rxd sent a reply that is not JSON (HTTP {status})") from None
        if status >= 400:
            error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise ApiError(
                status,
                str(error.get("code", "error")),
                str(error.get("message", f"HTTP {status}")),
            )
        return data
