"""The API client: JSON over HTTP on rxd's Unix socket (or its network door, cli/door.py),
stdlib only so rxctl starts fast."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from rxslurm.cli.door import DEFAULT_SOCKET, SOCKET_ENV, Door, DoorError, find_door, munge_header


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
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        where = self.door.address
        conn: http.client.HTTPConnection
        if self.door.kind == "network":
            try:
                name, credential = munge_header(self.door, method, route, payload or b"")
            except DoorError as exc:
                raise ClientError(str(exc)) from None
            headers[name] = credential
            conn = http.client.HTTPConnection(*self.door.host_port, timeout=self.timeout)
        else:
            conn = _UnixConnection(self.door.address, self.timeout)
        try:
            try:
                conn.request(method, route, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonUnavailable(
                    f"rxd is not running (nothing listens on {where})"
                ) from None
            except PermissionError:
                raise DaemonUnavailable(f"cannot reach rxd: permission denied on {where}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonUnavailable(f"cannot reach rxd on {where}: {exc}") from None
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
