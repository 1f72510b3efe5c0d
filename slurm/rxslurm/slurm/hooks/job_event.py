"""PrologSlurmctld / EpilogSlurmctld program: tells rxd at once that an rx job started or ended.

slurmctld runs it as SlurmUser for every job, so it must be quick and must never fail a job: it
only looks at jobs named rx-*, gives rxd one second, and always exits 0. What it sends is a poke,
not data rxd trusts: rxd answers by asking Slurm itself (a reconcile pass). The reconciler's timer
is the safety net when a poke is lost.

Where to send: every target listed in /etc/rxslurm/hook-sockets (one per line, # comments), or
/run/rxslurm/rxd.sock when that file does not exist. A target is a socket path (rxd on this host)
or "host:port", rxd's network door on another host: the request then carries a MUNGE credential
of SlurmUser bound to it (request_binding.py), and rxd checks SlurmUser is in hook_users.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from rxslurm.protocol import routes
from rxslurm.protocol.job_comment import is_container_job
from rxslurm.protocol.paths import DEFAULT_SOCKET, HOOK_TARGETS

SOCKETS_FILE = Path(HOOK_TARGETS)
TIMEOUT_S = 1.0


def sockets(listing: Path = SOCKETS_FILE) -> list[str]:
    try:
        lines = listing.read_text().splitlines()
    except OSError:
        return [DEFAULT_SOCKET]
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def event_of(env: dict[str, str]) -> str:
    context = env.get("SLURM_SCRIPT_CONTEXT", "")
    return "end" if context.startswith("epilog") else "start"


ROUTE = routes.HOOK_JOB


def request_bytes(body: dict[str, object], headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: rxd\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


def munge_headers(body: dict[str, object]) -> dict[str, str]:
    """The MUNGE credential header binding this poke to SlurmUser (for the network door)."""
    from rxslurm.slurm import munge, request_binding  # ctypes only when a network door is listed

    payload = json.dumps(body).encode()
    binding = request_binding.bind("POST", ROUTE, payload, os.getuid())
    return {request_binding.HEADER: munge.encode(binding.to_payload())}


def poke(target: str, body: dict[str, object]) -> bool:
    try:
        if target.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT_S)
            sock.connect(target)
            headers = None
        else:
            headers = munge_headers(body)
            host, _, port = target.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=TIMEOUT_S)
        with sock:
            sock.sendall(request_bytes(body, headers))
            return sock.recv(64).startswith(b"HTTP/1.1 2")
    except Exception:  # a hook must never fail a job, whatever went wrong
        return False


def main(env: dict[str, str] | None = None, listing: Path = SOCKETS_FILE) -> int:
    env = dict(os.environ) if env is None else env
    name = env.get("SLURM_JOB_NAME", "")
    job_id = env.get("SLURM_JOB_ID", "")
    if not is_container_job(name) or not job_id.isdigit():
        return 0
    body = {"event": event_of(env), "job_id": int(job_id)}
    for path in sockets(listing):
        poke(path, body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
