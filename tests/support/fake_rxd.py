"""A one-connection stand-in for rxd's API or exec socket, for tests of rxctl without a daemon."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


class Served(threading.Thread):
    received: bytes = b""


def serve(path: Path, answer: bytes, *, exec_socket: bool = False) -> Served:
    """Listen on `path`; answer one connection with `answer` after reading its request, which
    the returned thread keeps in `received` (the API socket's)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            if exec_socket:
                # The exec request carries our stdio as descriptors: close the copies.
                _, fds, _, _ = socket.recv_fds(conn, 65536, 8)
                for fd in fds:
                    os.close(fd)
            else:
                thread.received = conn.recv(65536)
            conn.sendall(answer)

    thread = Served(target=run, daemon=True)
    thread.start()
    return thread


def http_answer(data: object, status: str = "200 OK") -> bytes:
    body = json.dumps(data).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@contextlib.contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A folder with a short path: Unix socket paths are limited to about 100 bytes."""
    with tempfile.TemporaryDirectory(prefix="rx") as folder:
        yield Path(folder)
