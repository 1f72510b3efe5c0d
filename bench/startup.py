"""rxctl's start-up alone: `rxctl status` and `rxctl exec` against a stand-in rxd that answers at
once, beside the bare interpreter (`python -c pass`) and the click path (`rxctl --version`).

Needs no cluster: the stand-in serves a canned status and ends each exec session with exit 0, so
what is timed is rxctl starting, parsing, connecting and printing. The four commands take turns,
so drift and other users of the machine hit all alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.harness import VENV_BIN, Result, Row, summarize
from bench.suite import Context
from rxslurm.protocol.exec_wire import EXEC_SOCKET_NAME

RXCTL = str(VENV_BIN / "rxctl")
PYTHON = str(VENV_BIN / "python")
N_FULL = 200
N_QUICK = 10
WARMUP = 3
STATUS = {
    "project": "bench",
    "state": "running",
    "name": "rx-bench",
    "job_id": 1,
    "node": "n1",
    "gpus": 0,
    "uptime_s": 60,
    "workspace": "/srv/rxslurm/workspaces/bench",
}


def _serve(server: socket.socket, answer: bytes, exec_socket: bool) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # closed: the bench is over
        with conn:
            if exec_socket:
                _, fds, _, _ = socket.recv_fds(conn, 65536, 8)
                for fd in fds:
                    os.close(fd)
            else:
                conn.recv(65536)
            with contextlib.suppress(OSError):
                conn.sendall(answer)


@contextlib.contextmanager
def standin_rxd() -> Iterator[str]:
    """The API and exec sockets of an rxd that answers at once; yields the API socket's path."""
    body = json.dumps(STATUS).encode()
    http = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    with tempfile.TemporaryDirectory(prefix="rxbench") as folder:
        servers = []
        for name, answer, exec_socket in (
            ("rxd.sock", http, False),
            (EXEC_SOCKET_NAME, b'{"exit": 0}\n', True),
        ):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(Path(folder) / name))
            server.listen(64)
            threading.Thread(target=_serve, args=(server, answer, exec_socket), daemon=True).start()
            servers.append(server)
        try:
            yield str(Path(folder) / "rxd.sock")
        finally:
            for server in servers:
                server.close()


def commands(api_socket: str) -> dict[str, list[str]]:
    return {
        "python": [PYTHON, "-c", "pass"],
        "status": [RXCTL, "--socket", api_socket, "status", "--project", "bench"],
        "exec": [RXCTL, "--socket", api_socket, "exec", "--project", "bench", "--", "true"],
        "version": [RXCTL, "--version"],
    }


def timed(argv: Sequence[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RX_PROJECT", "RXCTL_SOCKET")}
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr!r}")
    return took


def sample(n: int) -> dict[str, dict[str, float]]:
    """p50/p95/... of each command, n turns each after a warm-up."""
    with standin_rxd() as api_socket:
        argvs = commands(api_socket)
        for argv in argvs.values():
            for _ in range(WARMUP):
                timed(argv)
        times: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(n):
            for name, argv in argvs.items():
                times[name].append(timed(argv))
    return {name: summarize(values) for name, values in times.items()}


def run(ctx: Context) -> Result:
    n = N_QUICK if ctx.quick else N_FULL
    result = Result("startup", "rxctl start-up", ctx.quick, params={"n": n, "warmup": WARMUP})
    figures = sample(n)
    result.results = figures
    python = figures["python"]["p50_ms"]
    result.rows = [
        Row(
            "startup",
            f"rxctl {name} start-up p50 (stand-in rxd)",
            figures[name]["p50_ms"],
            python,
            "ms",
            "python -c pass",
            note=f"rxctl's own part {figures[name]['p50_ms'] - python:+.1f} ms",
            headline=name == "exec",
        )
        for name in ("status", "exec")
    ]
    result.rows.append(
        Row(
            "startup",
            "rxctl --version p50 (the click path every other command takes)",
            figures["version"]["p50_ms"],
            python,
            "ms",
            "python -c pass",
        )
    )
    result.notes = [
        "The stand-in rxd answers from a thread of the bench process at once; the interpreter "
        "is the venv's, with rx-slurm installed as the bench runs it.",
    ]
    return result
