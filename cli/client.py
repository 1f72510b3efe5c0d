"""The API client: JSON over HTTP on rxd's Unix socket, stdlib only so rxctl starts fast."""

from __future__ import annotations

import http.client
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("rxd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


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
        conn = _UnixConnection(self.path, self.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            try:
                conn.request(method, route, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonUnavailable(
                    f"rxd is not running (nothing listens on {self.path})"
                ) from None
            except PermissionError:
                raise DaemonUnavailable(
                    f"cannot reach rxd: permission denied on {self.path}"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonUnavailable(f"cannot reach rxd on {self.path}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise ClientError(
                f"rxd sent a reply that is not JSON (HTTP {response.status})"
            ) from None
        if response.status >= 400:
            error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise ApiError(
                response.status,
                str(error.get("code", "error")),
                str(error.get("message", f"HTTP {response.status}")),
            )
        return data
