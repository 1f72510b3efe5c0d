"""The API client: JSON over HTTP on rxd's Unix socket, stdlib only so rxctl starts fast."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/rxslurm/rxd.sock"
SOCKET_ENV = "RXCTL_SOCKET"


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
    path: str, method: str, route: str, body: bytes | None, timeout: float
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange over the Unix socket at `path`: (status, body).

    http.client would do, but it imports email and ssl, which is a third of rxctl's start-up.
    rxd answers with a Content-Length or chunked, and `Connection: close` ends the answer.
    """
    head = [f"{method} {route} HTTP/1.1", "Host: rxd", "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
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
    body = []
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
        self.path = socket_path(path)
        self.timeout = timeout

    def get(self, route: str) -> Any:
        return self.request("GET", route)

    def post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", route, body or {})

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        try:
            status, raw = http_request(self.path, method, route, payload, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(
                f"rxd is not running (nothing listens on {self.path})"
            ) from None
        except PermissionError:
            raise DaemonUnavailable(f"cannot reach rxd: permission denied on {self.path}") from None
        except (OSError, _BadReply) as exc:
            raise DaemonUnavailable(f"cannot reach rxd on {self.path}: {exc}") from None
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
