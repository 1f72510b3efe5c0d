"""The exec protocol's wire format, spoken by rxctl and rxd (docs/exec.md).

On rxd's exec socket, and on the control channel of the network door's stream, every message is
one JSON object on one line. The client sends the request (with its stdio attached on the
socket), then `{"signal": NAME}` for the signals it forwards; rxd answers with progress lines,
`{"ready": true}`, and finally `{"exit": N}` or `{"error": "..."}`.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

# rxd serves exec on a second Unix socket, in the same folder as its API socket.
EXEC_SOCKET_NAME = "rxd-exec.sock"
# The longest message; the request may be longer (argv travels in it; Linux's ARG_MAX is 2 MiB).
MAX_MESSAGE = 64 * 1024
MAX_REQUEST = 1024 * 1024
# The signals a client forwards to the command, by the name that travels.
SIGNAL_NAMES: dict[signal.Signals, str] = {
    signal.SIGINT: "INT",
    signal.SIGTERM: "TERM",
    signal.SIGHUP: "HUP",
    signal.SIGQUIT: "QUIT",
    signal.SIGWINCH: "WINCH",
}
SIGNALS: dict[str, signal.Signals] = {name: signum for signum, name in SIGNAL_NAMES.items()}
# The network door's stream (exec/door.py, cli/exec_remote.py): each message's first byte names
# its channel. c: JSON lines as above; 0: the caller's stdin (empty: its end); 1, 2: the
# command's stdout and stderr.
CONTROL, STDIN, STDOUT, STDERR = b"c", b"0", b"1", b"2"


class ProtocolError(Exception):
    """The other side broke the protocol; the message says how, in one line."""


def exec_socket_for(api_socket: str) -> str:
    """The exec socket beside an API socket."""
    return os.path.join(os.path.dirname(api_socket) or ".", EXEC_SOCKET_NAME)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; deep nesting
        # ends in RecursionError.
        raise ProtocolError("a message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


class LineReader:
    """Splits a byte stream into JSON objects, one per line; holds at most `limit` bytes."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > self.limit:
            raise ProtocolError(f"a message is longer than {self.limit} bytes")
        return [decode(line) for line in lines if line.strip()]
