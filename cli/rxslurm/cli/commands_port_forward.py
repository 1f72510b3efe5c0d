"""`rxctl port-forward`: a project's service reached from here (docs/services.md).

Each connection to 127.0.0.1:LOCAL is one exec session (the same authenticated path as `rxctl
exec`: the `exec` role, an `srun --overlap` step of the container's job) whose step is rxd's
relay to the service's port on the node (daemon/.../exec/port_relay.py); the connection itself is
the session's stdin and stdout. A child process per connection: the exec client owns its
process's signals. Only connections from this user's own processes are relayed (peer_uid.py):
127.0.0.1 is open to every user of this host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click

from rxslurm.cli import exec_client, render, session
from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.common import api_errors, echo, project_option
from rxslurm.cli.peer_uid import peer_uid, unix_peer_uid
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import routes


def service_port(client: Client, project: str) -> int:
    """The port of the project's running service, or a one-line error."""
    status = client.get(routes.path(routes.CONTAINER_STATUS, project))
    where = status.get("service")
    if not isinstance(where, str) or ":" not in where:
        raise click.ClickException(
            f"the container of {project} runs no service now ({status.get('state')}); "
            "it needs `rxctl project set --service CMD --port N` and a start"
        )
    return int(where.rsplit(":", 1)[1])


def relay_connection(client: Client, project: str, conn: socket.socket) -> int:
    """In a child: one exec session whose stdin and stdout are the connection."""
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
    request: dict[str, Any] = {"forward": True, "wake": False}
    try:
        return session.run_session(client, project, request)
    except (ClientError, exec_client.ExecError) as exc:
        print(f"rxctl port-forward: {render.safe(str(exc))}", file=sys.stderr)
        return 125


def accepted(conn: socket.socket, peer: Any) -> bool:
    """Whether the connection comes from a process of this user; if not, one line says so."""
    try:
        if conn.family == socket.AF_UNIX:
            owner: int | None = unix_peer_uid(conn)
            where = "the Unix socket"
        else:
            owner = peer_uid(conn.getsockname(), peer)
            where = f"{peer[0]}:{peer[1]}"
    except OSError:
        owner, where = None, "an unknown peer"
    if owner == os.getuid():
        return True
    who = "an unknown user" if owner is None else f"uid {owner}"
    print(
        f"rxctl port-forward: refused a connection from {where} ({who}, not yours)",
        file=sys.stderr,
    )
    sys.stderr.flush()
    return False


def tcp_listener(local: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", local))
    except OSError as exc:
        listener.close()
        raise click.ClickException(f"cannot listen on 127.0.0.1:{local}: {exc.strerror}") from None
    return listener


def unix_listener(path: Path) -> socket.socket:
    """A Unix socket at `path` that only this user can connect to: made with mode 0600 (the
    umask is set before it exists, so it is never open to others). An existing path is left
    alone and refused."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    except OSError as exc:
        listener.close()
        raise click.ClickException(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    return listener


@click.command("port-forward")
@project_option
@click.argument("local", type=click.IntRange(1, 65535), required=False)
@click.option(
    "unix_path",
    "--unix",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Listen on a new Unix socket at PATH (mode 0600) instead of a TCP port; it is "
    "removed when the forward ends.",
)
@click.pass_obj
@api_errors
def port_forward(
    client: Client, project: str | None, local: int | None, unix_path: Path | None
) -> None:
    """Reach a project's service from here, on 127.0.0.1:LOCAL (or a Unix socket).

    Each connection to 127.0.0.1:LOCAL is relayed to the service's port in the container
    through an exec step of its job, until Ctrl-C. Needs the exec role (owner or manager).
    Only your own processes' connections are relayed: another user's is refused and closed.
    With --unix PATH it listens on a Unix socket only you can open instead.

    Example: rxctl port-forward --project alpha 8080
    """
    if (local is None) == (unix_path is None):
        raise click.UsageError("give either LOCAL (a TCP port) or --unix PATH")
    name = choose_project(client, project)
    port = service_port(client, name)
    listener = tcp_listener(local) if local is not None else unix_listener(Path(str(unix_path)))
    where = f"127.0.0.1:{local}" if local is not None else str(unix_path)
    listener.listen(16)
    # Children are reaped by the kernel: each connection's session ends on its own.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # A SIGTERM ends the forward as Ctrl-C does: its socket file goes with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    echo(f"Forwarding {where} to {name}'s service (port {port}); Ctrl-C to stop.")
    sys.stdout.flush()
    try:
        while True:
            conn, peer = listener.accept()
            if not accepted(conn, peer):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os._exit(relay_connection(client, name, conn))
            conn.close()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
        if unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(unix_path)
