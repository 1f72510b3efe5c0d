"""One exec session of the SDK in a process of its own: `python -m rxslurm.sdk.session_child FD`.

rxctl's session code (cli/session.py) speaks every exec transport (rxd's socket, the network
door, whatever comes next) with the process's own stdin, stdout and stderr. Run here, those are
pipes the SDK reads, so the command's output is captured whichever transport carries it, and the
signals rxctl forwards (the SDK's TERM on a deadline) reach the command the same way.

FD is one end of a socket pair: the SDK writes the session's spec there (not in argv, which every
user of the host can read) and reads back one JSON object: `{"exit": N}` or
`{"error": "...", "code": ...}`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any


def read_spec(sock: socket.socket) -> dict[str, Any]:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    spec = json.loads(b"".join(chunks))
    if not isinstance(spec, dict):
        raise ValueError("the session's spec is not a JSON object")
    return spec


def outcome(spec: dict[str, Any]) -> dict[str, Any]:
    from rxslurm.cli import session
    from rxslurm.cli.client import ApiError, Client, ClientError
    from rxslurm.cli.exec_client import ExecError

    client = Client(spec.get("socket"))
    try:
        return {"exit": session.run_session(client, str(spec["project"]), dict(spec["request"]))}
    except ExecError as exc:
        return {"error": str(exc), "code": exc.code}
    except ApiError as exc:
        return {"error": exc.message, "code": exc.code, "status": exc.status}
    except ClientError as exc:
        return {"error": str(exc), "code": None}


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    # rxctl's waiting line would land in the command's stderr: the SDK shows state its own way.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        answer = outcome(read_spec(sock))
    except (ValueError, KeyError, TypeError) as exc:
        answer = {"error": f"the SDK's session runner got a bad spec: {exc}", "code": None}
    except Exception as exc:  # its stderr is the command's: the reason goes back as the answer
        answer = {"error": f"the SDK's session runner failed: {exc!r}", "code": None}
    sock.sendall(json.dumps(answer).encode())
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
