"""Load generators that run AS A TEST USER (rxd knows callers by their uid): `python -m
bench.clients KIND ...`, started by the benchmarks with the repository as working folder.

Standard library and rxslurm.cli only, like rxctl. Each prints one JSON object on stdout.
Concurrent workers start together at a wall-clock instant (`start_at`) and stop at `end_at`,
so several processes measure the same window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def exec_loop(socket_path: str, project: str, count: int) -> dict[str, Any]:
    """`count` sessions of `true` through rxd's exec socket, without rxctl's start-up."""
    from rxslurm.cli import exec_client
    from rxslurm.protocol.exec_wire import exec_socket_for

    null = os.open(os.devnull, os.O_RDWR)
    path = exec_socket_for(socket_path)
    request = {"project": project, "argv": ["true"]}
    seconds = []
    began = time.time()
    for _ in range(count):
        started = time.perf_counter()
        code = exec_client.run(path, request, stdio=(null, null, null))
        seconds.append(time.perf_counter() - started)
        if code != 0:
            return {"error": f"exit {code}", "seconds": seconds}
    return {"seconds": seconds, "began": began, "ended": time.time()}


def exec_serve(socket_path: str, project: str) -> dict[str, Any]:
    """One session of `true` per line read on stdin, its seconds written as a line on stdout:
    the bench interleaves these with its other samples."""
    from rxslurm.cli import exec_client
    from rxslurm.protocol.exec_wire import exec_socket_for

    null = os.open(os.devnull, os.O_RDWR)
    path = exec_socket_for(socket_path)
    request = {"project": project, "argv": ["true"]}
    for _ in sys.stdin:
        started = time.perf_counter()
        code = exec_client.run(path, request, stdio=(null, null, null))
        took = time.perf_counter() - started
        print(json.dumps({"seconds": took} if code == 0 else {"error": f"exit {code}"}))
        sys.stdout.flush()
    return {"done": True}


def _window(
    threads: int, start_at: float, end_at: float, one: Callable[[], None]
) -> dict[str, Any]:
    """Call `one` in a loop from `threads` threads between start_at and end_at (wall clock)."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def worker(mine: list[float]) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < end_at:
            started = time.perf_counter()
            try:
                one()
            except Exception as exc:  # counted and reported; the run goes on
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            mine.append(time.perf_counter() - started)

    pool = [threading.Thread(target=worker, args=(lat,)) for lat in latencies]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    flat = [x for lat in latencies for x in lat]
    return {"count": len(flat), "seconds": flat, "errors": errors[:5], "error_count": len(errors)}


def api_window(
    socket_path: str, project: str, threads: int, start_at: float, end_at: float
) -> dict[str, Any]:
    """GET /v1/projects/P/status as rxctl does it: one connection per request.

    `socket_path` "tcp:HOST:PORT": through rxd's network door, a MUNGE credential per request.
    """
    from rxslurm.cli.client import Client
    from rxslurm.protocol import routes

    if socket_path.startswith("tcp:"):
        os.environ.pop("RXCTL_SOCKET", None)
        os.environ["RXSLURM_SERVER"] = socket_path.removeprefix("tcp:")
        client = Client(None, timeout=60)
    else:
        client = Client(socket_path, timeout=60)
    route = routes.path(routes.CONTAINER_STATUS, project)
    return _window(threads, start_at, end_at, lambda: client.get(route))


def squeue_window(job_id: str, threads: int, start_at: float, end_at: float) -> dict[str, Any]:
    """The by-hand status check: one `squeue -h -j J` process per query."""
    argv = ["squeue", "-h", "-j", job_id, "-o", "%T|%N|%M"]

    def one() -> None:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(out.stderr.strip() or "no such job")

    return _window(threads, start_at, end_at, one)


def main(argv: list[str]) -> int:
    kind, *args = argv
    if kind == "exec-serve":
        result = exec_serve(args[0], args[1])
    elif kind == "exec":
        result = exec_loop(args[0], args[1], int(args[2]))
    elif kind == "api":
        result = api_window(args[0], args[1], int(args[2]), float(args[3]), float(args[4]))
    elif kind == "squeue":
        result = squeue_window(args[0], int(args[1]), float(args[2]), float(args[3]))
    else:
        print(f"unknown client kind {kind!r}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
